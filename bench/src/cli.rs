//! The command-line grammar of saga-bench. The global options (connections, output,
//! identity) are sagactl's (`sagactl::options`), so both take the same flags and
//! environment variables.

use clap::{Args, Parser, Subcommand};
use sagactl::options::GlobalArgs;

#[derive(Debug, Parser)]
#[command(
    name = "saga-bench",
    version,
    about = "Benchmark and load the order saga: the machine's ceilings, the saga's throughput, its latency."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Load the stack: place orders, follow each saga on the bus, report throughput and latency.
    Load(LoadArgs),
    /// Measure the parts' ceilings, the cost of one saga and the saga throughput, in one run.
    Bench(BenchArgs),
    /// The latency the machine itself gives a saga's path at a load: the saga's six
    /// transactions and five deliveries in plain SQL and AMQP, no project code, offered
    /// at --rate.
    BenchPath(BenchPathArgs),
}

/// Orders per second for `--rate`: a finite number of at least 0.01 (0 would never place one).
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.01 => Ok(r),
        Ok(_) => Err(format!(
            "{s} is not a rate: give orders per second of at least 0.01, e.g. --rate 200"
        )),
        Err(e) => Err(format!("{s:?} is not a number of orders per second: {e}")),
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct LoadArgs {
    /// How many orders to place.
    #[arg(long, default_value_t = 1000)]
    pub orders: u32,
    /// Orders in flight over HTTP at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// Most orders placed per second (default: as fast as the concurrency allows).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Share of each outcome, as weights.
    #[arg(long, default_value = "happy=100", value_parser = crate::mix::Mix::parse)]
    pub mix: crate::mix::Mix,
    /// Further order-svc instances (base URLs, comma-separated or repeated): orders are
    /// placed round robin over --order-url and these, as a load balancer would.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub also_order_url: Vec<String>,
    /// How long to wait for the last sagas after the last order was placed.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Orders of the happy-path load.
    #[arg(long, default_value_t = 2000)]
    pub orders: u32,
    /// HTTP concurrency of the load.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u32,
    /// Offer the counted load at this many orders per second instead of as fast as it
    /// goes: the costs per saga of two setups (one replica of each service against two)
    /// then compare at the same load. The ratio (d)/(c) is then the offered rate's, not
    /// the stack's.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Further order-svc instances (base URLs, comma-separated or repeated): the load's
    /// orders are placed round robin over --order-url and these.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub also_order_url: Vec<String>,
    /// Messages for the broker ceiling.
    #[arg(long, default_value_t = 20_000)]
    pub broker_messages: usize,
    /// Seconds of the database ceiling.
    #[arg(long, default_value_t = 5)]
    pub db_seconds: u64,
    /// Connections for the database ceiling (the services' pool size).
    #[arg(long, default_value_t = 12)]
    pub pool: u32,
    /// Relay loops for the relay backlog (the services' SAGA_RELAY_WORKERS).
    #[arg(long, env = "SAGA_RELAY_WORKERS", default_value_t = 4)]
    pub relay_workers: usize,
    /// Rows per relay batch (the services' SAGA_RELAY_BATCH).
    #[arg(long, env = "SAGA_RELAY_BATCH", default_value_t = 512)]
    pub relay_batch: i64,
    /// Outbox rows for the relay backlog.
    #[arg(long, default_value_t = 50_000)]
    pub relay_rows: u32,
    /// PostgreSQL server: a scratch database saga_bench is made there.
    #[command(flatten)]
    pub server: BenchServer,
    /// Before measuring, add this many finished sagas to the service databases (to see
    /// whether cost stays flat as they grow).
    #[arg(long, default_value_t = 0)]
    pub preload: i64,
    /// The services' databases, whose commits are counted.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "orders,inventory,payments"
    )]
    pub databases: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BenchPathArgs {
    /// Sagas offered per second, open loop: each starts at its time, whatever the others do.
    #[arg(long, value_parser = parse_rate)]
    pub rate: f64,
    /// Sagas to run.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub sagas: u32,
    /// Connections to PostgreSQL, shared by the path's steps.
    #[arg(long, default_value_t = 12)]
    pub pool: u32,
    /// Seconds to wait after the last placement for the sagas still on their way.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
    /// PostgreSQL server: a scratch database saga_bench_path is made there.
    #[command(flatten)]
    pub server: BenchServer,
}

/// The PostgreSQL server a benchmark makes its scratch database on.
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchServer {
    /// PostgreSQL server (no database): the benchmark's scratch database is made there.
    #[arg(
        long,
        env = "SAGA_BENCH_DATABASE_SERVER",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub database_server: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_argument_and_command_is_documented() {
        let commands = sagactl::grammar::assert_documented(Cli::command());
        assert!(commands >= 3, "{commands}");
    }

    #[test]
    fn a_rate_is_at_least_one_order_a_hundred_seconds() {
        assert_eq!(parse_rate("200"), Ok(200.0));
        assert_eq!(parse_rate("0.01"), Ok(0.01));
        assert!(parse_rate("0").unwrap_err().contains("at least 0.01"));
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("fast").unwrap_err().contains("not a number"));
    }

    #[test]
    fn the_global_options_go_before_or_after_the_command() {
        let cli = Cli::try_parse_from(["saga-bench", "load", "--json"]).unwrap();
        assert!(cli.global.output.json);
        let cli = Cli::try_parse_from(["saga-bench", "--order-url", "http://o", "bench"]).unwrap();
        assert_eq!(cli.global.conn.order_url, "http://o");
        assert!(matches!(cli.command, Command::Bench(_)));
    }
}
