//! inventory-svc: telemetry, configuration, build, run (all in [`inventory_svc::main`]).

fn main() -> anyhow::Result<()> {
    inventory_svc::main()
}
