//! saga-bench: the benchmarks and the load generator of the order saga. `load` places
//! orders and follows each saga to its end; `bench` measures, in one run, the machine's
//! ceilings for sagas, the saga throughput the stack reaches and what one saga costs;
//! `bench-path` offers the saga's path in plain SQL and AMQP, no project code, at a rate.
//!
//! Exit status, as sagactl's: 0 success; 1 the command ran but the answer is negative
//! (sagas lost); 2 bad arguments; 3 a dependency (broker or service) could not be reached.

mod cli;
mod commands;
mod cpu;
mod mix;
mod plain;

use clap::Parser;
use sagactl::context::Context;

#[tokio::main]
async fn main() {
    platform::crypto::install();
    let args = cli::Cli::parse();
    let ctx = Context::new("saga-bench", &args.global);
    let result = commands::run(&ctx, args.command).await;
    std::process::exit(sagactl::output::exit_code(&ctx, result));
}
