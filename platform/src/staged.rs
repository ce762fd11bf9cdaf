//! A batch's rows as a handler stages them: loaded once (one statement per table), changed
//! in memory by each decision in delivery order, and stored once.
//!
//! A service describes its tables with [`Staged`] and wraps it in [`StagedHandler`], the
//! consumer's [`Handler`]: for a batch (one message at low load, and every message handled
//! alone) it converts every event to the service's input, loads and locks the rows they
//! read, decides each in order on the tables the ones before it left, and stores the rows
//! [`changed`] (adds their writes to the batch's, which go to the database with its outbox
//! rows). The outcome is the one the messages would have had one by one: a decision
//! reads exactly what it would read alone, because the tables hold every row any input of
//! the batch reads.

use std::collections::BTreeMap;
use std::future::Future;

use messaging::consumer::{Handler, Handling, IncomingEvent};
use messaging::outbox::Emitter;
use messaging::retry::HandlerError;
use messaging::writes::Writes;
use sqlx::PgConnection;

/// A service's tables, staged for a batch.
pub trait Staged: Send + Sync + 'static {
    /// The catalog the service's events come from.
    type Event: messaging::Event;
    /// What the service reacts to, converted from an event.
    type Input: Send + Sync;
    /// The rows a batch reads and writes, in memory.
    type Tables: Clone + Send + Sync;

    /// The input an event is, or the refusal that dead-letters it.
    fn input(&self, event: &Self::Event) -> Result<Self::Input, HandlerError>;

    /// Loads, and locks for the transaction, every row a decision on any of `inputs` reads.
    fn load(
        &self,
        tx: &mut PgConnection,
        inputs: &[Self::Input],
    ) -> impl Future<Output = sqlx::Result<Self::Tables>> + Send;

    /// Decides `input` on `tables`, changes them as the plan says, and emits its events
    /// into `h.out`. Called in the message's span.
    fn decide(
        &self,
        tables: &mut Self::Tables,
        input: &Self::Input,
        h: &mut Handling<'_, Self::Event>,
    ) -> Result<(), HandlerError>;

    /// Adds the writes that store what changed from `loaded` to `now` to `writes`, which
    /// run with the batch's outbox rows (messaging::writes).
    fn store(
        &self,
        writes: &mut Writes,
        loaded: &Self::Tables,
        now: &Self::Tables,
    ) -> sqlx::Result<()>;
}

/// The consumer's handler for a service whose tables are [`Staged`].
pub struct StagedHandler<S>(pub S);

impl<S: Staged> Handler for StagedHandler<S> {
    type Event = S::Event;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<S::Event>,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let span = tracing::Span::current();
        let mut one = [Handling {
            incoming,
            span: &span,
            out,
        }];
        let mut writes = Writes::default();
        self.handle_all(tx, &mut one, &mut writes).await?;
        writes.execute(tx).await?;
        Ok(())
    }

    async fn handle_all(
        &self,
        tx: &mut PgConnection,
        batch: &mut [Handling<'_, S::Event>],
        writes: &mut Writes,
    ) -> Result<(), HandlerError> {
        let staged = &self.0;
        let inputs = batch
            .iter()
            .map(|h| staged.input(&h.incoming.event))
            .collect::<Result<Vec<_>, _>>()?;
        let loaded = staged.load(tx, &inputs).await?;
        let mut tables = loaded.clone();
        for (h, input) in batch.iter_mut().zip(&inputs) {
            let span = h.span.clone();
            span.in_scope(|| staged.decide(&mut tables, input, h))?;
        }
        staged.store(writes, &loaded, &tables)?;
        Ok(())
    }
}

/// The rows of `now` that are new or differ from `loaded`, in key order (the order the
/// rows were locked in). Rows are never deleted by a decision, so nothing else changed.
pub fn changed<'a, K: Ord, V: PartialEq>(
    loaded: &BTreeMap<K, V>,
    now: &'a BTreeMap<K, V>,
) -> Vec<(&'a K, &'a V)> {
    now.iter()
        .filter(|(k, v)| loaded.get(*k) != Some(*v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_and_changed_rows_are_stored() {
        let loaded = BTreeMap::from([(1, "a"), (2, "b"), (3, "c")]);
        let now = BTreeMap::from([(1, "a"), (2, "B"), (3, "c"), (4, "d")]);
        assert_eq!(changed(&loaded, &now), vec![(&2, &"B"), (&4, &"d")]);
        assert!(changed(&now, &now).is_empty());
    }
}
