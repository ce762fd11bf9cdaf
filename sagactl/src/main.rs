//! sagactl: the operator's and developer's command line for the order saga.
//!
//! Exit status: 0 success; 1 the command ran but the answer is negative (not found,
//! refused, a check failed); 2 bad arguments; 3 a dependency (broker or service) could not
//! be reached.

mod cli;
mod commands;
mod context;
mod identity;
mod mix;
mod output;

use clap::Parser;

#[tokio::main]
async fn main() {
    platform::crypto::install();
    let args = cli::Cli::parse();
    let ctx = context::Context::from_cli(&args);
    let code = match commands::run(&ctx, args.command).await {
        Ok(()) => 0,
        Err(e) => {
            let failure = context::Failure::classify(&e);
            output::error(&ctx, &e, failure);
            failure.exit_code()
        }
    };
    std::process::exit(code);
}
