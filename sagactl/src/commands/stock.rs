//! `sagactl stock adjust|show`: adjustments travel as StockAdjusted events; reads go to
//! inventory-svc.

use events::catalog::{Event, StockAdjusted};
use serde_json::json;

use crate::cli::StockCommand;
use crate::render::field;
use sagactl::context::{CliError, Context, Service};
use sagactl::output;

use sagactl::publish::publish_event;

pub(super) async fn run(ctx: &Context, cmd: StockCommand) -> anyhow::Result<()> {
    match cmd {
        StockCommand::Adjust { sku, delta } => {
            let event = Event::StockAdjusted(StockAdjusted {
                sku: sku.clone(),
                delta,
            });
            event
                .validate()
                .map_err(|e| CliError::Refused(format!("{e}; nothing was sent")))?;
            let envelope = publish_event(ctx, event).await?;
            let v = json!({"message_id": envelope.message_id, "sku": sku, "delta": delta});
            output::show(ctx, &v, |_| {
                format!(
                    "StockAdjusted {sku} {delta:+} published ({})",
                    envelope.message_id
                )
            });
            Ok(())
        }
        StockCommand::Show { sku } => {
            let v = ctx
                .get_ok(
                    Service::Inventory,
                    &sagactl::context::path(&["stock", &sku]),
                )
                .await?;
            output::show(ctx, &v, |v| {
                format!(
                    "{}  available {}  reserved {}  sold {}",
                    field(v, "sku"),
                    field(v, "available"),
                    field(v, "reserved"),
                    field(v, "sold")
                )
            });
            Ok(())
        }
    }
}
