//! `sagactl wallet deposit|show`: deposits travel as FundsDeposited events; reads go to
//! payment-svc.

use events::catalog::{Event, FundsDeposited};
use serde_json::json;

use crate::cli::WalletCommand;
use crate::render::{self, field};
use sagactl::context::{CliError, Context, Service};
use sagactl::output;

use sagactl::publish::publish_event;

pub(super) async fn run(ctx: &Context, cmd: WalletCommand) -> anyhow::Result<()> {
    match cmd {
        WalletCommand::Deposit {
            customer,
            amount,
            currency,
        } => {
            let event = Event::FundsDeposited(FundsDeposited {
                customer_id: customer.clone(),
                amount,
                currency: currency.clone(),
            });
            event
                .validate()
                .map_err(|e| CliError::Refused(format!("{e}; nothing was sent")))?;
            let envelope = publish_event(ctx, event).await?;
            let v = json!({"message_id": envelope.message_id, "customer_id": customer, "amount": amount, "currency": currency});
            output::show(ctx, &v, |_| {
                format!(
                    "FundsDeposited {customer} {} published ({})",
                    render::money(amount, &currency),
                    envelope.message_id
                )
            });
            Ok(())
        }
        WalletCommand::Show { customer } => {
            let v = ctx
                .get_ok(
                    Service::Payment,
                    &sagactl::context::path(&["wallets", &customer]),
                )
                .await?;
            output::show(ctx, &v, |v| {
                let currency = field(v, "currency");
                format!(
                    "{}  balance {}  captured {}  refunded {}",
                    field(v, "customer_id"),
                    render::money_field(v, "balance", &currency),
                    render::money_field(v, "captured", &currency),
                    render::money_field(v, "refunded", &currency)
                )
            });
            Ok(())
        }
    }
}
