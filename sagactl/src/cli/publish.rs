//! `sagactl publish`'s arguments: an event type of the catalog and its payload (as an
//! argument, a file or standard input), or raw bytes with a routing key.

use std::path::PathBuf;

use clap::Args;
use events::EventType;

use super::event_type_arg;

pub(super) fn publish_help() -> String {
    let mut s = String::from(
        "Wrap a payload in a valid envelope (fresh message id, correlation id from the payload's order id, SKU or customer) and publish it to the saga.events exchange with publisher confirms. The payload is checked against the catalog first: nothing is sent when it does not match. Prints the message id.\n\nEvent types and their payload fields:\n",
    );
    s.push_str(&events::tables::publish_listing());
    s
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
    /// Read the payload as this version of the type and publish it as that version
    /// (default: the newest; see `version` in docs/events.md). Not used with --raw.
    #[arg(long, value_name = "N", conflicts_with = "raw")]
    pub schema_version: Option<u32>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn every_catalog_type_is_an_argument() {
        for t in EventType::ALL {
            let cli =
                Cli::try_parse_from(["sagactl", "publish", t.name(), "--data", "{}"]).unwrap();
            assert!(matches!(cli.command, Command::Publish(p) if p.event_type == Some(t)));
        }
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
}
