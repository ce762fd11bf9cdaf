//! inventory-svc: telemetry, configuration, build, run.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = platform::telemetry::init(inventory_svc::SERVICE);
    let config = inventory_svc::config_from_env()?;
    let shutdown = platform::shutdown::on_signal();
    let app = inventory_svc::build(config, shutdown)
        .await
        .context("inventory-svc could not start")?;
    app.run_until_stopped().await
}
