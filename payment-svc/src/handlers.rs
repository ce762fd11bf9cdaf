//! payment-svc's consumer: a batch of events (one, at low load) is loaded with one
//! statement per table, decided in order on the staging tables ([`PaymentTables`], the
//! same the property tests run), and what changed is stored with one write per table,
//! sent with the batch's outbox rows in the consumer's transaction.

use events::Event;
use messaging::consumer::Handling;
use messaging::retry::HandlerError;
use messaging::writes::Writes;
use platform::inputs::unexpected_event;
use platform::staged::Staged;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::saga::{self, PaymentContext, PaymentInput};
use crate::staging::PaymentTables;
use crate::{SERVICE, store};

pub(crate) struct PaymentHandler;

impl Staged for PaymentHandler {
    type Event = Event;
    type Input = PaymentInput;
    type Tables = PaymentTables;

    fn input(&self, event: &Event) -> Result<PaymentInput, HandlerError> {
        Ok(PaymentInput::try_from(event).map_err(|t| unexpected_event(SERVICE, t))?)
    }

    fn load(
        &self,
        tx: &mut PgConnection,
        inputs: &[PaymentInput],
    ) -> impl Future<Output = sqlx::Result<PaymentTables>> + Send {
        store::load(tx, inputs)
    }

    fn decide(
        &self,
        tables: &mut PaymentTables,
        input: &PaymentInput,
        h: &mut Handling<'_, Event>,
    ) -> Result<(), HandlerError> {
        let ctx = PaymentContext {
            new_payment_id: Uuid::now_v7(),
            ..tables.load(input)
        };
        for event in tables.apply(saga::decide(&ctx, input)?) {
            h.out.emit(event);
        }
        Ok(())
    }

    fn store(
        &self,
        writes: &mut Writes,
        loaded: &PaymentTables,
        now: &PaymentTables,
    ) -> sqlx::Result<()> {
        store::store(writes, loaded, now)
    }
}
