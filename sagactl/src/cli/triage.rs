//! The arguments of the operator's triage: `stuck` (open sagas and cancelling them),
//! `find` (everything that names an id) and `audit` (the hands on the system).

use std::time::Duration;

use clap::{Args, Subcommand};
use sagactl::triage::{OPEN_STATUSES, Participant, parse_age};

pub(super) const STUCK_HELP: &str = "\
Open sagas (orders still pending or reserved), oldest first, each with its age, the time \
since its last event and the participant it waits on, read from the order's history: \
no StockReserved or StockRejected yet → inventory-svc; StockReserved and no PaymentDone or \
PaymentFailed → payment-svc; an answer recorded but the order still open → order-svc.

  sagactl stuck list --older-than 5m --waiting-on payment-svc
  sagactl stuck cancel --waiting-on payment-svc --yes
  sagactl stuck cancel 0193a4f2-7a00-7c4d-8e5f-0a1b2c3d4e5f

`sagactl trace ORDER` shows one saga; the explorer (`sagactl ui`) has the same list at /stuck.";

pub(super) const FIND_HELP: &str = "\
Every saga, dead letter and audit record that names an id: an order id, customer id, SKU, \
message id or payment id.

Sagas: the order of that id; among the newest --orders orders, those of that customer or \
with an item of that SKU; the order of the payment of that id; among the newest 200 \
orders, the one whose history holds a message of that id. Dead letters: through each \
service's listing, those of that message id, order id or customer id, and among the first \
--dlq-limit of each queue those whose correlation id or payload's order_id, customer_id, \
sku or payment_id it is (they stay in the queue). \
Audit: each service's records naming it as a subject (`GET /audit?subject=ID`).

  sagactl find alice
  sagactl find 0193a4f2-7a00-7c4d-8e5f-0a1b2c3d4e5f --json

The explorer (`sagactl ui`) has the same search in its header.";

#[derive(Debug, Subcommand)]
pub(crate) enum StuckCommand {
    /// List the open sagas matching the filters, oldest first, a page at a time.
    List {
        #[command(flatten)]
        filter: StuckFilter,
        /// Show at most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Skip this many first (the next page starts at offset + limit).
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Cancel the given orders, or every open saga matching the filters.
    ///
    /// One order at a time with order-svc's cancel, printing each as it is done. An order
    /// already closed is reported and skipped, so running it again is safe.
    Cancel {
        /// The orders to cancel; without any, every open saga the filters match.
        #[arg(conflicts_with_all = ["older_than", "status", "waiting_on"])]
        order_ids: Vec<uuid::Uuid>,
        #[command(flatten)]
        filter: StuckFilter,
        /// Do not ask before cancelling a filtered set (needed without a terminal).
        #[arg(long)]
        yes: bool,
    },
}

/// The filters of `stuck list` and `stuck cancel`.
#[derive(Debug, Clone, Args)]
pub(crate) struct StuckFilter {
    /// Only sagas at least this old: 90s, 15m, 2h, 1d.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Option<Duration>,
    /// Only orders in this open status.
    #[arg(long, value_parser = OPEN_STATUSES)]
    pub status: Option<String>,
    /// Only sagas waiting on this participant.
    #[arg(long, value_name = "SERVICE", value_parser = participant())]
    pub waiting_on: Option<Participant>,
}

fn participant() -> impl clap::builder::TypedValueParser<Value = Participant> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Participant::ALL.map(Participant::service))
        .try_map(|name| Participant::parse(&name))
}

/// `sagactl find`.
#[derive(Debug, Args)]
pub(crate) struct FindArgs {
    /// The id: an order id, customer id, SKU, message id or payment id.
    pub id: String,
    /// The newest orders searched for a customer id or SKU (1 to 1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub orders: u32,
    /// Messages read of each dead-letter queue at most.
    #[arg(long, default_value_t = 1000)]
    pub dlq_limit: usize,
}

/// `sagactl audit`.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Only this service's records.
    #[arg(long, value_parser = ["order-svc", "inventory-svc", "payment-svc"])]
    pub service: Option<String>,
    /// Only this operator's (the token's `sub`, or the operator named over AMQP).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action.
    #[arg(long, value_parser = messaging::audit::actions::ALL)]
    pub action: Option<String>,
    /// Only records naming this id (an order, customer, SKU or message id).
    #[arg(long, value_name = "ID")]
    pub subject: Option<String>,
    /// Only since this time: an instant (2026-12-01T10:00:00Z) or an age ago (15m, 1d).
    #[arg(long, value_name = "TIME", value_parser = super::bus::time_arg)]
    pub since: Option<String>,
    /// Only before this time (an instant or an age ago).
    #[arg(long, value_name = "TIME", value_parser = super::bus::time_arg)]
    pub until: Option<String>,
    /// Show at most this many (1 to 500).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub limit: u32,
    /// Go on from where a previous page ended (the `next` it printed).
    #[arg(long, value_name = "CURSOR")]
    pub before: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn stuck_filters_parse_and_refuse_what_they_do_not_know() {
        let cli = Cli::try_parse_from([
            "sagactl",
            "stuck",
            "list",
            "--older-than",
            "5m",
            "--waiting-on",
            "payment-svc",
        ])
        .unwrap();
        let Command::Stuck(super::StuckCommand::List { filter, .. }) = cli.command else {
            panic!("not stuck list");
        };
        assert_eq!(filter.older_than, Some(std::time::Duration::from_secs(300)));
        assert_eq!(
            filter.waiting_on,
            Some(sagactl::triage::Participant::Payment)
        );
        for bad in [
            ["sagactl", "stuck", "list", "--older-than", "5 weeks"],
            ["sagactl", "stuck", "list", "--waiting-on", "bank"],
            ["sagactl", "stuck", "list", "--status", "confirmed"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        // Ids and filters do not mix: which would win is not obvious.
        let mixed = Cli::try_parse_from([
            "sagactl",
            "stuck",
            "cancel",
            "0193a4f2-7a00-7c4d-8e5f-0a1b2c3d4e5f",
            "--status",
            "pending",
        ]);
        assert!(mixed.is_err());
    }
}
