//! order-svc: telemetry, configuration, build, run.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = platform::telemetry::init(order_svc::SERVICE);
    let config = order_svc::OrderConfig::from_env()?;
    let shutdown = platform::shutdown::on_signal();
    let app = order_svc::build(config, shutdown)
        .await
        .context("order-svc could not start")?;
    app.run_until_stopped().await
}
