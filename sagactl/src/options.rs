//! The global options of the command lines (`sagactl`, `saga-bench`): where the broker,
//! the services and the management API are, and how results are printed. Every connection
//! setting also comes from the same environment variable the services read.

use clap::Args;

/// How results are printed; global, so they go before or after the subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
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
pub enum OutputFormat {
    Table,
    Json,
    Jsonl,
}

/// Where the broker, the services and the management API are; global, and each also read
/// from the same environment variable the services use.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
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

/// Everything global a command line takes: where things are, how to print, who it is.
/// Flattened into each command line's top-level arguments.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub identity: crate::identity::Identity,
}
