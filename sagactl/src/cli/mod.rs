//! The command-line grammar: the commands and their arguments, one module per concern
//! (`publish`, `services` for orders, stock and wallets, `bus` for tail and the
//! dead-letter queues). The global options (connections, output, identity) are
//! `sagactl::options`, shared with `saga-bench`.

mod bus;
mod publish;
mod services;
mod triage;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use events::EventType;
use sagactl::options::GlobalArgs;

pub(crate) use bus::{DlqCommand, TailArgs};
pub(crate) use publish::{PayloadInput, PublishArgs};
pub(crate) use services::{OrderCommand, StockCommand, WalletCommand, parse_item};
pub(crate) use triage::{AuditArgs, FindArgs, StuckCommand, StuckFilter};

#[derive(Debug, Parser)]
#[command(
    name = "sagactl",
    version,
    about = "Operate and explore the order saga: publish events, place orders, read stock and wallets."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Wrap a payload in a valid envelope and publish it to saga.events with confirms.
    #[command(long_about = publish::publish_help())]
    Publish(PublishArgs),
    /// Place, show, list and cancel orders (order-svc HTTP).
    #[command(subcommand)]
    Order(OrderCommand),
    /// Adjust stock (StockAdjusted on the bus) and show it (inventory-svc HTTP).
    #[command(subcommand)]
    Stock(StockCommand),
    /// Deposit funds (FundsDeposited on the bus) and show wallets (payment-svc HTTP).
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// Follow every event on saga.events live (through a queue of its own).
    Tail(TailArgs),
    /// An order's whole saga as a timeline with its causation tree and final state.
    Trace {
        /// The order id (the saga's correlation id).
        order_id: uuid::Uuid,
    },
    /// The project's queues with ready/unacked/consumers and rates (management API).
    Queues {
        /// Refresh every N seconds until interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Triage the dead-letter queues through their services: groups, listing, redrive,
    /// edit and purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The services' audit logs of hands on the system (who adjusted, deposited, cancelled,
    /// replayed, edited or purged what), newest first.
    Audit(AuditArgs),
    /// Open sagas oldest first, with the participant each waits on; cancel them.
    #[command(subcommand, long_about = triage::STUCK_HELP)]
    Stuck(StuckCommand),
    /// Every saga, dead letter and audit record that names an order id, customer id, SKU,
    /// message id or payment id.
    #[command(long_about = triage::FIND_HELP)]
    Find(FindArgs),
    /// Declarative saga tests against the running stack.
    #[command(subcommand)]
    Scenario(ScenarioCommand),
    /// Check the contract's at-rest invariants across the three services (exit 1 on any breach).
    Verify {
        /// Sagas may still be in flight: check again until there is no breach or SECS passed.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        settle: u64,
        /// What you know was published as StockAdjusted for a SKU, summed (repeatable):
        /// available + reserved + sold must add up to it. Catches an adjustment applied
        /// twice, which the services' own counters cannot.
        #[arg(long, value_name = "SKU=TOTAL", value_parser = parse_total)]
        expect_stock: Vec<(String, i64)>,
        /// What you know was published as FundsDeposited for a customer, summed
        /// (repeatable): balance + captured − refunded must add up to it.
        #[arg(long, value_name = "CUSTOMER=TOTAL", value_parser = parse_total)]
        expect_deposits: Vec<(String, i64)>,
    },
    /// Serve the saga explorer in the browser: recent orders, one saga drawn as a timeline
    /// and causation tree, the stuck sagas, the dead-letter queues, a search box for any
    /// id, live queue depths.
    Ui {
        /// Address to listen on (keep it on localhost: the explorer can redrive and purge).
        #[arg(long, env = "SAGA_UI_LISTEN", default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions {
        /// The shell to write the script for.
        shell: clap_complete::Shell,
    },
    /// Print a bearer token signed with the development key (for curl).
    Token(TokenArgs),
    /// Create the development key pair and its JWKS (./scripts/stack.sh up runs this).
    DevKeys(DevKeysArgs),
}

/// `NAME=TOTAL` for `verify --expect-*`.
fn parse_total(s: &str) -> Result<(String, i64), String> {
    let (name, total) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected NAME=TOTAL, e.g. BOOK=10, not {s:?}"))?;
    if name.is_empty() {
        return Err(format!("no name before '=' in {s:?}"));
    }
    let total = total
        .parse()
        .map_err(|e| format!("{total:?} is not a whole number: {e}"))?;
    Ok((name.to_owned(), total))
}

/// An event type named as in the catalog; the possible values are the catalog's names, so
/// `--help` and shell completion list them.
fn event_type_arg() -> impl clap::builder::TypedValueParser<Value = EventType> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(EventType::ALL.map(|t| t.name()))
        .try_map(|name| name.parse::<EventType>())
}

/// `sagactl token`: print a token for curl.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The token's `sub`: the customer id, or the operator's name [default: --as].
    #[arg(long)]
    pub sub: Option<String>,
    /// A role (customer or operator); repeat for both [default: --roles].
    #[arg(long = "role")]
    pub role: Vec<String>,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

/// `sagactl dev-keys`: create the development key pair.
#[derive(Debug, Args)]
pub(crate) struct DevKeysArgs {
    /// The directory to create them in.
    #[arg(long, default_value = ".stack")]
    pub dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ScenarioCommand {
    /// Run scenario files (or every *.toml of a directory); exit 1 if any fails.
    Run {
        /// Scenario files (TOML) or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use sagactl::options::OutputFormat;

    #[test]
    fn every_argument_and_command_is_documented() {
        let commands = sagactl::grammar::assert_documented(Cli::command());
        assert!(commands > 20, "{commands}");
    }

    #[test]
    fn global_flags_are_under_their_own_headings_in_every_help() {
        let mut cli = Cli::command();
        cli.build();
        let dlq = cli.find_subcommand_mut("dlq").unwrap();
        let mut purge = dlq.find_subcommand_mut("purge").unwrap().clone();
        let help = purge.render_long_help().to_string();
        let connection = help.find("Connection:").expect(&help);
        let output = help.find("Output:").expect(&help);
        let own = help.find("Options:").expect(&help);
        // The command's own options first, then the global groups.
        assert!(own < connection && own < output, "{help}");
        assert!(
            help[own..connection.min(output)].contains("--yes"),
            "{help}"
        );
        assert!(
            !help[own..connection.min(output)].contains("--amqp-url"),
            "{help}"
        );
        assert!(help[connection..].contains("--amqp-url"), "{help}");
        assert!(help[output..].contains("--color"), "{help}");
    }

    #[test]
    fn output_format_and_colour_parse() {
        let cli = Cli::try_parse_from(["sagactl", "dlq", "list", "-o", "jsonl"]).unwrap();
        assert_eq!(cli.global.output.format, OutputFormat::Jsonl);
        let cli = Cli::try_parse_from(["sagactl", "--color", "never", "queues"]).unwrap();
        assert_eq!(cli.global.output.color, clap::ColorChoice::Never);
        assert!(Cli::try_parse_from(["sagactl", "queues", "-o", "yaml"]).is_err());
        assert!(Cli::try_parse_from(["sagactl", "queues", "-o", "table", "--json"]).is_err());
    }
}
