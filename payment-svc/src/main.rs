//! payment-svc: telemetry, configuration, build, run.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = platform::telemetry::init(payment_svc::SERVICE);
    let config = payment_svc::config_from_env()?;
    let shutdown = platform::shutdown::on_signal();
    let app = payment_svc::build(config, shutdown)
        .await
        .context("payment-svc could not start")?;
    app.run_until_stopped().await
}
