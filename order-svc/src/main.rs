//! order-svc: telemetry, configuration, build, run (all in [`order_svc::main`]).

fn main() -> anyhow::Result<()> {
    order_svc::main()
}
