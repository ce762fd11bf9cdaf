//! The arguments of the commands that read the bus: `tail` and the dead-letter queues
//! (`dlq`, through the owning service's HTTP API).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use events::EventType;
use sagactl::dead_letters::{Filter, parse_time};

use super::event_type_arg;

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

/// The filters of `dlq show`, `dlq redrive` and `dlq purge`: every one given must hold.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct DlqFilterArgs {
    /// Only dead letters of this event type (OrderCreated).
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Only dead letters of this cause: the error code's class (bad_payload,
    /// negative_stock) or the broker's reason (delivery_limit); `dlq groups` lists them.
    #[arg(long)]
    pub cause: Option<String>,
    /// Only those that failed at or after this time: an instant
    /// (2026-12-01T10:00:00Z) or an age ago (15m, 2h, 1d).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub since: Option<String>,
    /// Only those that failed before this time (an instant or an age ago).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub until: Option<String>,
    /// Only those about this order.
    #[arg(long)]
    pub order_id: Option<uuid::Uuid>,
    /// Only those about this customer.
    #[arg(long)]
    pub customer_id: Option<String>,
    /// Only this message.
    #[arg(long)]
    pub message_id: Option<uuid::Uuid>,
}

impl DlqFilterArgs {
    pub(crate) fn filter(&self) -> Filter {
        Filter {
            event_type: self.event_type.clone(),
            cause: self.cause.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            order_id: self.order_id.map(|id| id.to_string()),
            customer_id: self.customer_id.clone(),
            message_id: self.message_id.map(|id| id.to_string()),
        }
    }
}

/// A time as `--since`/`--until` take it, as RFC 3339.
pub(crate) fn time_arg(text: &str) -> Result<String, String> {
    parse_time(text, chrono::Utc::now())
}

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// Each dead-letter queue with its message count.
    List,
    /// A service's dead letters grouped by cause and event type: how many, first and last
    /// seen, an example message.
    Groups {
        /// A service (inventory-svc) or its dead-letter queue (inventory-svc.dlq).
        queue: String,
    },
    /// The dead letters matching the filters, with why they failed (left in the queue).
    Show {
        /// A service (inventory-svc) or its dead-letter queue (inventory-svc.dlq).
        queue: String,
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Show at most this many (the oldest first).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Skip this many first (the next page starts at offset + limit).
        #[arg(long, default_value_t = 0)]
        offset: u32,
    },
    /// Send the dead letters matching the filters back to their service, which follows
    /// each to its end: applied, a duplicate, or back in the DLQ with its reason.
    ///
    /// Without --dry-run it says how many would go and asks first (unless --yes), then
    /// shows the progress and the outcome. The service records who asked in its audit log.
    #[command(visible_alias = "replay")]
    Redrive {
        /// A service (inventory-svc) or its dead-letter queue (inventory-svc.dlq).
        queue: String,
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Only say how many would be redriven.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask; needed when standard input is not a terminal.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Correct the payload in $EDITOR and send the corrected copy instead (as `dlq
        /// edit`; one message, named by --message-id).
        #[arg(long, requires = "message_id", conflicts_with = "dry_run")]
        edit: bool,
    },
    /// Delete the dead letters matching the filters (asks first unless --yes). The service
    /// records who asked in its audit log.
    Purge {
        /// A service (inventory-svc) or its dead-letter queue (inventory-svc.dlq).
        queue: String,
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Only say how many would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask; needed when standard input is not a terminal.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Send a corrected copy of one dead letter (a new message caused by it); the original
    /// leaves the DLQ once the copy is applied, and stays if the copy fails too.
    Edit {
        /// A service (inventory-svc) or its dead-letter queue (inventory-svc.dlq).
        queue: String,
        /// The dead letter to correct.
        message_id: uuid::Uuid,
        /// The corrected payload (a JSON object) from a file, or `-` for standard input;
        /// without it the payload opens in $EDITOR.
        #[arg(long, value_name = "FILE")]
        payload: Option<PathBuf>,
    },
    /// A service's recent dead-letter jobs (redrive, purge, edit), or one of them.
    Jobs {
        /// A service (inventory-svc) or its dead-letter queue (inventory-svc.dlq).
        queue: String,
        /// The job to show; without it the newest jobs.
        job_id: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn purge_takes_yes() {
        let cli = Cli::try_parse_from(["sagactl", "dlq", "purge", "order-svc", "--yes"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Dlq(DlqCommand::Purge { yes: true, .. })
        ));
    }

    #[test]
    fn replay_is_redrive_and_its_filters_parse() {
        let cli = Cli::try_parse_from([
            "sagactl",
            "dlq",
            "replay",
            "inventory-svc",
            "--cause",
            "bad_payload",
            "--since",
            "15m",
            "--dry-run",
        ])
        .unwrap();
        let Command::Dlq(DlqCommand::Redrive {
            filter, dry_run, ..
        }) = cli.command
        else {
            panic!("replay is not redrive");
        };
        assert!(dry_run);
        let f = filter.filter();
        assert_eq!(f.cause.as_deref(), Some("bad_payload"));
        assert!(f.since.is_some_and(|s| s.ends_with('Z')));
        for bad in [
            vec![
                "sagactl",
                "dlq",
                "show",
                "order-svc",
                "--since",
                "yesterday",
            ],
            vec!["sagactl", "dlq", "purge", "order-svc", "--order-id", "o-1"],
            vec!["sagactl", "dlq", "redrive", "order-svc", "--edit"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }
}
