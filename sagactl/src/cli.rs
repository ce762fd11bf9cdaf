//! The command-line grammar. Every connection setting also comes from the same
//! environment variable the services read.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use events::EventType;

#[derive(Debug, Parser)]
#[command(
    name = "sagactl",
    version,
    about = "Operate and explore the order saga: publish events, place orders, read stock and wallets."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub conn: Connection,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub identity: crate::identity::Identity,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed; global, so they go before or after the subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Output")]
pub(crate) struct OutputArgs {
    /// Output format: `table` (text for people), `json` (one document), `jsonl` (one JSON
    /// object per line for lists).
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value_t = OutputFormat::Table
    )]
    pub format: OutputFormat,
    /// Short for `-o json`.
    #[arg(long, global = true, conflicts_with = "format")]
    pub json: bool,
    /// When to use colours; `auto` uses them on a terminal unless NO_COLOR is set.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "WHEN",
        default_value_t = clap::ColorChoice::Auto
    )]
    pub color: clap::ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Json,
    Jsonl,
}

/// Where the broker, the services and the management API are; global, and each also read
/// from the same environment variable the services use.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub(crate) struct Connection {
    /// Broker URL (with vhost); several, comma-separated, for the nodes of a cluster.
    #[arg(
        long,
        global = true,
        env = "SAGA_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/saga?heartbeat=10",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// order-svc base URL.
    #[arg(
        long,
        global = true,
        env = "SAGA_ORDER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub order_url: String,
    /// inventory-svc base URL.
    #[arg(
        long,
        global = true,
        env = "SAGA_INVENTORY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub inventory_url: String,
    /// payment-svc base URL.
    #[arg(
        long,
        global = true,
        env = "SAGA_PAYMENT_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub payment_url: String,
    /// RabbitMQ management API base URL.
    #[arg(
        long,
        global = true,
        env = "SAGA_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management_url: String,
    /// RabbitMQ management API user.
    #[arg(
        long,
        global = true,
        env = "SAGA_MANAGEMENT_USER",
        default_value = "guest"
    )]
    pub management_user: String,
    /// RabbitMQ management API password.
    #[arg(
        long,
        global = true,
        env = "SAGA_MANAGEMENT_PASSWORD",
        default_value = "guest",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub management_password: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Wrap a payload in a valid envelope and publish it to saga.events with confirms.
    #[command(long_about = publish_help())]
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
    /// Read, replay or purge a dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Load the stack: place orders, follow each saga on the bus, report throughput and latency.
    Load(LoadArgs),
    /// Measure the parts' ceilings, the cost of one saga and the saga throughput, in one run.
    Bench(BenchArgs),
    /// The latency the machine itself gives a saga's path at a load: the saga's six
    /// transactions and five deliveries in plain SQL and AMQP, no project code, offered
    /// at --rate.
    BenchPath(BenchPathArgs),
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
    /// and causation tree, the dead-letter queues, live queue depths.
    Ui {
        /// Address to listen on (keep it on localhost: the explorer can replay and purge).
        #[arg(long, env = "SAGA_UI_LISTEN", default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions {
        /// The shell to write the script for.
        shell: clap_complete::Shell,
    },
    /// Print a bearer token signed with the development key (for curl).
    Token(crate::identity::TokenArgs),
    /// Create the development key pair and its JWKS (./scripts/stack.sh up runs this).
    DevKeys(crate::identity::DevKeysArgs),
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

fn publish_help() -> String {
    let mut s = String::from(
        "Wrap a payload in a valid envelope (fresh message id, correlation id from the payload's order id, SKU or customer) and publish it to the saga.events exchange with publisher confirms. The payload is checked against the catalog first: nothing is sent when it does not match. Prints the message id.\n\nEvent types and their payload fields:\n",
    );
    s.push_str(&events::tables::publish_listing());
    s
}

/// An event type named as in the catalog; the possible values are the catalog's names, so
/// `--help` and shell completion list them.
fn event_type_arg() -> impl clap::builder::TypedValueParser<Value = EventType> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(EventType::ALL.map(|t| t.name()))
        .try_map(|name| name.parse::<EventType>())
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Event type (see the list above). Not used with --raw.
    #[arg(value_parser = event_type_arg(), required_unless_present = "raw")]
    pub event_type: Option<EventType>,
    #[command(flatten)]
    pub input: PayloadInput,
    /// Correlation id (default: the payload's order_id, sku or customer_id).
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Message id of the message that caused this one.
    #[arg(long)]
    pub causation_id: Option<uuid::Uuid>,
    /// Reuse a message id, to deliberately repeat a message.
    #[arg(long)]
    pub message_id: Option<uuid::Uuid>,
    /// Send the input bytes as they are, without envelope or checks (to test dead-lettering).
    #[arg(long, requires = "routing_key")]
    pub raw: bool,
    /// Routing key for --raw.
    #[arg(long)]
    pub routing_key: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct PayloadInput {
    /// The payload (or, with --raw, the body) as an argument.
    #[arg(long)]
    pub data: Option<String>,
    /// Read it from a file.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// `-`: read it from standard input.
    #[arg(value_parser = parse_dash, value_name = "-")]
    pub stdin: Option<Stdin>,
}

/// The `-` that stands for standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stdin;

fn parse_dash(s: &str) -> Result<Stdin, String> {
    if s == "-" {
        Ok(Stdin)
    } else {
        Err(format!(
            "{s:?}: give the payload with --data, --file or - (standard input)"
        ))
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

#[derive(Debug, Subcommand)]
pub(crate) enum ScenarioCommand {
    /// Run scenario files (or every *.toml of a directory); exit 1 if any fails.
    Run {
        /// Scenario files (TOML) or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Only events of this type.
    #[arg(long = "type", value_parser = event_type_arg())]
    pub event_type: Option<EventType>,
    /// Only events about this order (correlation id).
    #[arg(long = "order")]
    pub order_id: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long = "for", value_name = "SECS")]
    pub duration: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// Each dead-letter queue with its message count.
    List,
    /// The messages in a dead-letter queue, with why they failed (left in the queue).
    Show {
        /// A dead-letter queue (order-svc.dlq) or a service name (order-svc).
        queue: String,
        /// Show at most this many messages (the oldest first).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Send dead-lettered messages back to their service's input queue (the inbox drops any
    /// that were already handled).
    Replay {
        /// A dead-letter queue (order-svc.dlq) or a service name (order-svc).
        queue: String,
        /// Replay only this message.
        #[arg(long)]
        message_id: Option<String>,
        /// Edit the body in $EDITOR before sending it back (one message at a time).
        #[arg(long, requires = "message_id")]
        edit: bool,
    },
    /// Delete every message of a dead-letter queue (asks first unless --yes).
    Purge {
        /// A dead-letter queue (order-svc.dlq) or a service name (order-svc).
        queue: String,
        /// Do not ask; needed when standard input is not a terminal.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum OrderCommand {
    /// Place an order: `sagactl order place --customer alice --currency EUR --item BOOK:2:1500`.
    Place {
        /// The customer placing the order (their wallet pays).
        #[arg(long)]
        customer: String,
        /// ISO 4217 currency of the prices (three upper-case letters).
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// SKU:QUANTITY:UNIT_PRICE (unit price in minor units); repeat for more items.
        #[arg(long = "item", required = true, value_parser = parse_item)]
        items: Vec<events::catalog::OrderItem>,
        /// Sent as the Idempotency-Key header: placing again with the same key and items
        /// returns the same order instead of a second one.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until the order reaches a final status and show it.
        #[arg(long)]
        wait: bool,
    },
    /// Show an order with its history.
    Show {
        /// The order id.
        order_id: String,
        /// Wait until the order reaches a final status first.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel an order (refund and restock if it was confirmed).
    Cancel {
        /// The order id.
        order_id: String,
    },
    /// List orders, newest first.
    List {
        /// Only orders in this status.
        #[arg(long, value_parser = ["pending", "reserved", "confirmed", "rejected", "cancelled"])]
        status: Option<String>,
        /// Show at most this many orders.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StockCommand {
    /// Add (or with a negative delta remove) available stock: publishes StockAdjusted.
    Adjust {
        /// The SKU.
        sku: String,
        /// Units to add; negative to remove.
        #[arg(allow_hyphen_values = true)]
        delta: i64,
    },
    /// Show a SKU's stock.
    Show {
        /// The SKU.
        sku: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// Deposit money (minor units) into a customer's wallet: publishes FundsDeposited.
    Deposit {
        /// The customer whose wallet receives the money.
        customer: String,
        /// The amount in minor units of the currency (cents for EUR: 1500 is 15.00 EUR).
        amount: i64,
        /// ISO 4217 currency of the amount.
        #[arg(long, default_value = "EUR")]
        currency: String,
    },
    /// Show a customer's wallet.
    Show {
        /// The customer.
        customer: String,
    },
}

/// `SKU:QUANTITY:UNIT_PRICE`.
pub(crate) fn parse_item(s: &str) -> Result<events::catalog::OrderItem, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [sku, quantity, unit_price] = parts[..] else {
        return Err(format!(
            "{s:?} is not SKU:QUANTITY:UNIT_PRICE (for example BOOK:2:1500)"
        ));
    };
    let quantity = quantity
        .parse()
        .map_err(|_| format!("quantity {quantity:?} in {s:?} is not a whole number"))?;
    let unit_price = unit_price.parse().map_err(|_| {
        format!("unit price {unit_price:?} in {s:?} is not a whole number of minor units")
    })?;
    Ok(events::catalog::OrderItem {
        sku: sku.to_owned(),
        quantity,
        unit_price,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every argument of every command, with the path of commands that leads to it.
    fn all_args(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments() {
            out.push((path.clone(), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            all_args(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_of_every_command_has_help_text() {
        let mut args = Vec::new();
        all_args(&Cli::command(), "sagactl".into(), &mut args);
        let undocumented: Vec<String> = args
            .iter()
            .filter(|(_, a)| !matches!(a.get_id().as_str(), "help" | "version"))
            .filter(|(_, a)| a.get_help().is_none() && a.get_long_help().is_none())
            .map(|(path, a)| format!("{path}: {}", a.get_id()))
            .collect();
        assert!(undocumented.is_empty(), "no help text: {undocumented:?}");
    }

    /// Every command, with the path of commands that leads to it.
    fn all_commands(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            out.push((sub_path.clone(), sub.clone()));
            all_commands(sub, sub_path, out);
        }
    }

    #[test]
    fn every_command_says_what_it_does_in_its_help() {
        let mut cli = Cli::command();
        cli.build();
        let mut commands = Vec::new();
        all_commands(&cli, "sagactl".into(), &mut commands);
        assert!(commands.len() > 20, "{}", commands.len());
        for (path, mut cmd) in commands {
            if cmd.get_name() == "help" {
                continue;
            }
            let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
            assert!(!about.trim().is_empty(), "{path} has no description");
            let help = cmd.render_long_help().to_string();
            assert!(help.contains("Usage:"), "{path}: {help}");
        }
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
        assert_eq!(cli.output.format, OutputFormat::Jsonl);
        let cli = Cli::try_parse_from(["sagactl", "--color", "never", "queues"]).unwrap();
        assert_eq!(cli.output.color, clap::ColorChoice::Never);
        assert!(Cli::try_parse_from(["sagactl", "queues", "-o", "yaml"]).is_err());
        assert!(Cli::try_parse_from(["sagactl", "queues", "-o", "table", "--json"]).is_err());
    }

    #[test]
    fn purge_takes_yes() {
        let cli = Cli::try_parse_from(["sagactl", "dlq", "purge", "order-svc", "--yes"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Dlq(DlqCommand::Purge { yes: true, .. })
        ));
    }

    #[test]
    fn every_catalog_type_is_an_argument() {
        for t in EventType::ALL {
            let cli =
                Cli::try_parse_from(["sagactl", "publish", t.name(), "--data", "{}"]).unwrap();
            assert!(matches!(cli.command, Command::Publish(p) if p.event_type == Some(t)));
        }
    }

    #[test]
    fn items_parse_from_sku_quantity_price() {
        let item = parse_item("BOOK:2:1500").unwrap();
        assert_eq!(
            (item.sku.as_str(), item.quantity, item.unit_price),
            ("BOOK", 2, 1500)
        );
        assert!(
            parse_item("BOOK:2")
                .unwrap_err()
                .contains("SKU:QUANTITY:UNIT_PRICE")
        );
        assert!(
            parse_item("BOOK:two:1")
                .unwrap_err()
                .contains("whole number")
        );
    }

    #[test]
    fn publish_needs_exactly_one_payload_source() {
        assert!(Cli::try_parse_from(["sagactl", "publish", "StockAdjusted"]).is_err());
        assert!(
            Cli::try_parse_from(["sagactl", "publish", "StockAdjusted", "--data", "{}", "-"])
                .is_err()
        );
        let ok =
            Cli::try_parse_from(["sagactl", "publish", "StockAdjusted", "--data", "{}"]).unwrap();
        assert!(matches!(ok.command, Command::Publish(_)));
        let dash = Cli::try_parse_from(["sagactl", "publish", "StockAdjusted", "-"]).unwrap();
        assert!(matches!(dash.command, Command::Publish(p) if p.input.stdin == Some(Stdin)));
    }

    #[test]
    fn raw_publish_needs_a_routing_key() {
        assert!(Cli::try_parse_from(["sagactl", "publish", "--raw", "--data", "x"]).is_err());
        assert!(
            Cli::try_parse_from([
                "sagactl",
                "publish",
                "--raw",
                "--routing-key",
                "order.created",
                "--data",
                "x"
            ])
            .is_ok()
        );
    }

    #[test]
    fn negative_stock_deltas_are_accepted() {
        let cli = Cli::try_parse_from(["sagactl", "stock", "adjust", "BOOK", "-3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Stock(StockCommand::Adjust { delta: -3, .. })
        ));
    }
}
