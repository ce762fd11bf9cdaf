//! payment-svc: telemetry, configuration, build, run (all in [`payment_svc::main`]).

fn main() -> anyhow::Result<()> {
    payment_svc::main()
}
