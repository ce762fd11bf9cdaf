//! sagactl: the operator's and developer's command line for the order saga.
//!
//! Exit status: 0 success; 1 the command ran but the answer is negative (not found,
//! refused, a check failed); 2 bad arguments; 3 a dependency (broker or service) could not
//! be reached.

mod cli;
mod commands;
mod render;

use clap::Parser;
use sagactl::context::Context;

#[tokio::main]
async fn main() {
    platform::crypto::install();
    let args = cli::Cli::parse();
    let ctx = Context::new("sagactl", &args.global);
    let result = commands::run(&ctx, args.command).await;
    std::process::exit(sagactl::output::exit_code(&ctx, result));
}
