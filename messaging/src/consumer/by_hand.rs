//! The audit records of the operator's events: who sent one (the broker user and the
//! operator it names, [`crate::authenticity::hand_sender`]), what it asked, and how it
//! ended. An applied one is recorded among the batch's writes ([`crate::audit::
//! record_with_writes`]); a dead-lettered one after its dead-letter copy is confirmed, in a
//! statement of its own that may fail or time out without touching the dead-lettering.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use serde_json::{Value, json};

use crate::audit::{self, HandAction, Via};
use crate::envelope::{Envelope, decode_body};
use crate::event::{Event, EventKind};

use super::{EventConsumer, Handler};

/// Longest the record of a rejection may take before it is given up (and logged).
const REJECTION_RECORD_PATIENCE: Duration = Duration::from_secs(5);

impl<H: Handler> EventConsumer<H> {
    /// The record of `envelope` as an action by hand, when its type is one
    /// ([`EventKind::hand_action`]).
    pub(super) fn by_hand(
        &self,
        kind: <H::Event as Event>::Kind,
        envelope: &Envelope,
        props: &BasicProperties,
    ) -> Option<HandAction> {
        let action = kind.hand_action()?;
        let sender =
            crate::authenticity::hand_sender(&self.inner.users, props, &self.inner.own_user);
        let mut detail = json!({
            "event_type": envelope.event_type,
            "version": envelope.version,
            "payload": envelope.payload,
        });
        if let Some(claimed) = &sender.claimed {
            // A name the broker user may not give: shown, so the attempt is seen.
            detail["claimed_operator"] = Value::from(claimed.as_str());
        }
        let user_id = props.user_id().as_ref().map(|u| u.as_str());
        if user_id.is_some() && user_id != sender.broker_user.as_deref() {
            // A copy relayed since (a retry, a replay): who relayed it.
            detail["relayed_by"] = Value::from(user_id);
        }
        Some(HandAction {
            actor: sender.actor(),
            via: Via::Amqp,
            broker_user: sender.broker_user,
            action,
            subjects: vec![
                envelope.correlation_id.clone(),
                envelope.message_id.to_string(),
            ],
            detail,
        })
    }

    /// Records a dead-lettered delivery as rejected, if it is an operator's event whose
    /// type can be read (even with a payload that is not valid). Best effort: a failure is
    /// logged and nothing else.
    pub(super) async fn record_rejection(&self, delivery: &Delivery, code: &str, error: &str) {
        let envelope = match decode_body::<H::Event>(&delivery.data) {
            Ok((envelope, _)) | Err((Some(envelope), _)) => envelope,
            Err((None, _)) => return,
        };
        let Some(kind) = <H::Event as Event>::Kind::from_name(&envelope.event_type) else {
            return;
        };
        let Some(action) = self.by_hand(kind, &envelope, &delivery.properties) else {
            return;
        };
        let result = json!({"code": code, "error": error});
        let recorded = tokio::time::timeout(REJECTION_RECORD_PATIENCE, async {
            let mut conn = self.inner.pool.acquire().await?;
            audit::record(&mut conn, &action, audit::REJECTED, Some(&result)).await
        })
        .await;
        match recorded {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not record the rejected operator's message")
            }
            Err(_) => tracing::warn!("recording the rejected operator's message timed out"),
        }
    }
}
