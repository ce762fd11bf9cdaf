//! A service's process: telemetry, configuration, build, run until SIGTERM or Ctrl-C, on
//! the tokio runtime `#[tokio::main]` would build.
//!
//! Each service's library has a plain `pub fn main()` that calls [`run_service`], and its
//! binary calls that. An async function is compiled where its future is polled: polled
//! from a binary's `async fn main`, the whole service was optimised a second time in the
//! binary (about a minute of a release build per service). Called from a plain function
//! in the library, it is compiled once, there.

use std::future::Future;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::Application;

/// Runs `future` to completion on a new multi-threaded runtime with I/O and timers. Tasks
/// still running then (a drain past its grace period) are dropped; the runtime waits at
/// most a second for threads of its own blocked in them.
pub fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    crate::crypto::install();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the tokio runtime")?;
    let result = runtime.block_on(future);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// The whole life of `service`'s process: telemetry first (so that what follows is
/// logged), its configuration from the environment, the application built with a
/// shutdown token that SIGTERM and Ctrl-C cancel, then served until it has drained.
pub fn run_service<C, Built>(
    service: &'static str,
    config: impl FnOnce() -> anyhow::Result<C>,
    build: impl FnOnce(C, CancellationToken) -> Built,
) -> anyhow::Result<()>
where
    Built: Future<Output = anyhow::Result<Application>>,
{
    block_on(async move {
        let _telemetry = crate::telemetry::init(service);
        let config = config()?;
        let shutdown = crate::shutdown::on_signal();
        let app = build(config, shutdown)
            .await
            .with_context(|| format!("{service} could not start"))?;
        app.run_until_stopped().await
    })
}
