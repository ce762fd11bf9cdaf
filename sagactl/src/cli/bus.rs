//! The arguments of the commands that read the bus: `tail` and the dead-letter queues
//! (`dlq`).

use clap::{Args, Subcommand};
use events::EventType;

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
}
