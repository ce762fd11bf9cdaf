//! What the dead-letter jobs do: redrive the selected dead letters to the service and
//! follow them, purge them, or replay one with a corrected payload and remove the original
//! once the correction was applied.

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use messaging::authenticity::PUBLISHED_BY_HEADER;
use messaging::publisher::{ConfirmedPublisher, OutgoingMessage};
use messaging::topology::REDELIVER_EXCHANGE;
use serde_json::{Value, json};
use uuid::Uuid;

use super::OperatorState;
use super::dead_letter::{DeadLetter, REDRIVE_JOB_HEADER, Selection};
use super::follow::{Follow, NAMED_MAX, in_inbox};
use super::jobs::{self, Job};
use super::scan::Scan;

/// Copies sent before their confirms are awaited.
const WINDOW: usize = 256;
/// How often a job writes how far it got.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers dropped from a copy sent back: the failure record and the broker's death log.
fn is_failure_header(name: &str) -> bool {
    name.starts_with("x-saga-")
        || name.starts_with("x-death")
        || name.starts_with("x-first-death")
        || name.starts_with("x-last-death")
}

/// The copy of a dead letter the service sends itself through `saga.redeliver`: the same
/// message without its failure headers, marked with the job, and naming its original
/// publisher (the service publishes it as its own user, which consumers believe about
/// that header).
pub fn replay_copy(
    service: &str,
    props: &BasicProperties,
    body: Vec<u8>,
    job: Uuid,
) -> OutgoingMessage {
    let mut headers = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            if !is_failure_header(k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
    if messaging::envelope::header_str(props, PUBLISHED_BY_HEADER).is_none()
        && let Some(user) = props.user_id()
    {
        headers.insert(PUBLISHED_BY_HEADER.into(), text(user.as_str()));
    }
    headers.insert(REDRIVE_JOB_HEADER.into(), text(&job.to_string()));
    OutgoingMessage {
        exchange: REDELIVER_EXCHANGE.to_owned(),
        routing_key: service.to_owned(),
        body,
        properties: props.clone().with_headers(headers),
    }
}

/// How a job ended: its outcome, and the ids of the messages it took (the first
/// [`NAMED_MAX`]), which its audit record then names.
pub struct Ended {
    pub outcome: Value,
    pub named: Vec<String>,
}

/// Ends `job` with what it returned: `done` and its outcome, or `failed` and why.
pub async fn finish(state: &OperatorState, job: &Job, result: anyhow::Result<Ended>) {
    let (status, ended) = match result {
        Ok(ended) => ("done", ended),
        Err(e) => {
            tracing::error!(job = %job.id, error = %format!("{e:#}"), "dead-letter job failed");
            let outcome = json!({"error": format!("{e:#}")});
            (
                "failed",
                Ended {
                    outcome,
                    named: Vec::new(),
                },
            )
        }
    };
    if let Err(e) = jobs::end(state.pool(), job, status, &ended.outcome, &ended.named).await {
        tracing::error!(job = %job.id, error = %e, "could not record the end of a dead-letter job");
    }
}

/// Sends the selected dead letters back to the service, acking each original once the
/// broker confirmed its copy, then follows them to their end.
pub async fn redrive(
    state: &OperatorState,
    job: &Job,
    selection: &Selection,
) -> anyhow::Result<Ended> {
    let mut follow = Follow::default();
    let (mut matched, mut sent) = (0u64, 0u64);
    {
        let mut scan = Scan::open(state, "redrive").await?;
        let publisher = ConfirmedPublisher::open(scan.connection(), CONFIRM_TIMEOUT).await?;
        let mut window: Vec<(Delivery, DeadLetter)> = Vec::with_capacity(WINDOW);
        let mut noted = Instant::now();
        loop {
            let next = scan.next().await?;
            let end = next.is_none();
            if let Some(delivery) = next {
                let d = DeadLetter::describe(&delivery);
                if selection.matches(&d) {
                    matched += 1;
                    window.push((delivery, d));
                }
            }
            if window.len() >= WINDOW || (end && !window.is_empty()) {
                let n = send(state, &publisher, job.id, &mut window, &mut follow).await?;
                scan.taken(u32::try_from(n).unwrap_or(u32::MAX));
                sent += n;
            }
            if end || state.stopping() {
                break;
            }
            if noted.elapsed() > PROGRESS_EVERY {
                jobs::progress(state.pool(), job.id, matched, sent, &follow.outcome()).await?;
                noted = Instant::now();
            }
        }
        scan.close().await;
    }
    jobs::progress(state.pool(), job.id, matched, sent, &follow.outcome()).await?;
    follow.run(state, job.id, (matched, sent)).await?;
    Ok(Ended {
        outcome: follow.outcome(),
        named: follow.named(),
    })
}

/// Sends one window of dead letters; returns how many were sent (their originals acked).
async fn send(
    state: &OperatorState,
    publisher: &ConfirmedPublisher,
    job: Uuid,
    window: &mut Vec<(Delivery, DeadLetter)>,
    follow: &mut Follow,
) -> anyhow::Result<u64> {
    let ids: Vec<Uuid> = window
        .iter()
        .filter_map(|(_, d)| {
            d.message_id
                .as_deref()
                .and_then(|m| Uuid::parse_str(m).ok())
        })
        .collect();
    let handled = in_inbox(state, &ids).await?;
    let copies: Vec<OutgoingMessage> = window
        .iter()
        .map(|(delivery, _)| {
            replay_copy(
                state.service(),
                &delivery.properties,
                delivery.data.clone(),
                job,
            )
        })
        .collect();
    let results = publisher.publish_all(&copies).await;
    let mut sent = 0;
    for ((delivery, d), result) in window.drain(..).zip(results) {
        match result {
            Ok(()) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                let before = d
                    .message_id
                    .as_deref()
                    .and_then(|m| Uuid::parse_str(m).ok())
                    .is_some_and(|id| handled.contains(&id));
                follow.sent(&d, before);
                sent += 1;
            }
            // Left unacked: it goes back to the queue with the scan.
            Err(e) => {
                tracing::warn!(error = %e, "a dead letter could not be sent back; it stays");
                follow.not_sent();
            }
        }
    }
    Ok(sent)
}

/// Deletes the selected dead letters.
pub async fn purge(
    state: &OperatorState,
    job: &Job,
    selection: &Selection,
) -> anyhow::Result<Ended> {
    let mut scan = Scan::open(state, "purge").await?;
    let (mut purged, mut named) = (0u64, Vec::new());
    let mut noted = Instant::now();
    while let Some(delivery) = scan.next().await? {
        let d = DeadLetter::describe(&delivery);
        if selection.matches(&d) {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            scan.taken(1);
            purged += 1;
            if let Some(id) = d.message_id
                && named.len() < NAMED_MAX
            {
                named.push(id);
            }
        }
        if state.stopping() {
            break;
        }
        if noted.elapsed() > PROGRESS_EVERY {
            jobs::progress(
                state.pool(),
                job.id,
                purged,
                purged,
                &json!({"purged": purged}),
            )
            .await?;
            noted = Instant::now();
        }
    }
    scan.close().await;
    let outcome = json!({"purged": purged});
    jobs::progress(state.pool(), job.id, purged, purged, &outcome).await?;
    Ok(Ended { outcome, named })
}

/// The original of an edit, found in the dead-letter queue: its properties and body.
pub struct Original {
    pub dead_letter: DeadLetter,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// Finds the dead letter `message_id` (left in the queue).
pub async fn find(state: &OperatorState, message_id: &str) -> anyhow::Result<Option<Original>> {
    seek(state, message_id, false).await
}

/// Removes the dead letter `message_id` (the original of an edit); whether it was there.
async fn remove(state: &OperatorState, message_id: &str) -> anyhow::Result<bool> {
    Ok(seek(state, message_id, true).await?.is_some())
}

/// The first dead letter with `message_id`, acked (removed) when `take`.
async fn seek(
    state: &OperatorState,
    message_id: &str,
    take: bool,
) -> anyhow::Result<Option<Original>> {
    let mut scan = Scan::open(state, "seek").await?;
    let mut found = None;
    while let Some(delivery) = scan.next().await? {
        let d = DeadLetter::describe(&delivery);
        if d.message_id.as_deref() == Some(message_id) {
            if take {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                scan.taken(1);
            }
            found = Some(Original {
                dead_letter: d,
                properties: delivery.properties.clone(),
                body: delivery.data.clone(),
            });
            break;
        }
    }
    scan.close().await;
    Ok(found)
}

/// Sends the corrected message, follows it, and removes the original once it was applied.
pub async fn edit(
    state: &OperatorState,
    job: &Job,
    original: &Original,
    corrected: OutgoingMessage,
    corrected_id: Uuid,
    diff: &Value,
) -> anyhow::Result<Ended> {
    {
        let conn = state.connect("edit").await?;
        let publisher = ConfirmedPublisher::open(&conn, CONFIRM_TIMEOUT).await?;
        publisher.publish(&corrected).await?;
        messaging::amqp::close_quietly(&conn, "edit sent").await;
    }
    let mut follow = Follow::default();
    let mut sent_as = original.dead_letter.clone();
    sent_as.message_id = Some(corrected_id.to_string());
    follow.sent(&sent_as, false);
    follow.run(state, job.id, (1, 1)).await?;
    let mut outcome = follow.outcome();
    let applied = outcome["applied"] == 1;
    let original_id = original.dead_letter.message_id.clone().unwrap_or_default();
    let removed = applied && remove(state, &original_id).await?;
    outcome["corrected_message_id"] = json!(corrected_id);
    outcome["original"] = json!(if removed { "removed" } else { "kept" });
    outcome["diff"] = diff.clone();
    Ok(Ended {
        outcome,
        named: Vec::new(),
    })
}
