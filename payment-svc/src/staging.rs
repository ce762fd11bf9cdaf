//! The staging tables a batch is decided on: payment-svc's rows as maps, loaded by
//! [`store`](crate::store) for a batch, changed by each plan the consumer applies, and
//! written back by `store` where they changed. The property tests run the real
//! [`decide`] on the same tables, with no database.

use std::collections::BTreeMap;

use events::Event;
use platform::inputs::{Refusal, unexpected_event};
use uuid::Uuid;

use crate::saga::{Payment, PaymentContext, PaymentInput, Plan, Wallet, decide};

/// The wallet and payment tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentTables {
    pub wallets: BTreeMap<String, Wallet>,
    pub payments: BTreeMap<Uuid, Payment>,
    /// Decisions taken so far: the next one's payment id (sequential here, for readable
    /// runs).
    pub issued: u64,
}

impl PaymentTables {
    /// What the handler loads for `input`.
    pub fn load(&self, input: &PaymentInput) -> PaymentContext {
        let payment = input
            .order_id()
            .and_then(|id| self.payments.get(&id).cloned());
        let wallet = input
            .wallet_key(payment.as_ref())
            .and_then(|c| self.wallets.get(c).cloned());
        PaymentContext {
            payment,
            wallet,
            new_payment_id: Uuid::from_u64_pair(1, self.issued + 1),
        }
    }

    /// Writes what the plan stores; returns the events it emits.
    pub fn apply(&mut self, plan: Plan) -> Vec<Event> {
        if let Some((customer_id, wallet)) = plan.wallet {
            self.wallets.insert(customer_id, wallet);
        }
        if let Some((order_id, payment)) = plan.payment {
            self.payments.insert(order_id, payment);
        }
        plan.emit
    }

    /// The handler: an event in, the events it emits out, or the refusal that
    /// dead-letters it (and then nothing changed).
    pub fn handle(&mut self, event: &Event) -> Result<Vec<Event>, Refusal> {
        let input =
            PaymentInput::try_from(event).map_err(|t| unexpected_event(crate::SERVICE, t))?;
        let plan = decide(&self.load(&input), &input)?;
        self.issued += 1;
        Ok(self.apply(plan))
    }
}
