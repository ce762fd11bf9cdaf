//! The command-line grammar. The global options (connections, output, identity) are
//! `sagactl::options`, shared with `saga-bench`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use events::EventType;
use sagactl::options::GlobalArgs;

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
