//! The owning service's dead-letter API (`/dlq`, `/dlq/messages`, `/dlq/redrive`,
//! `/dlq/purge`, `/dlq/edit`, `/dlq/jobs`), called with the operator's token: the one way
//! `sagactl dlq`, `sagactl find` and the explorer act on or read a dead-letter queue, so
//! every change is made by the service and recorded in its audit log.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sagactl::context::{CliError, Context, Service, path};
use sagactl::dead_letters::{Filter, job_ended, owning_service, with_query};

/// Time between two reads of a running job.
const JOB_POLL: Duration = Duration::from_millis(300);
/// How long a job may show no progress before the command stops following it (the job
/// goes on in the service; `sagactl dlq jobs` shows it later).
const JOB_IDLE: Duration = Duration::from_secs(120);

/// The actions on dead letters that select them with a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bulk {
    Redrive,
    Purge,
}

impl Bulk {
    fn path(self) -> &'static str {
        match self {
            Bulk::Redrive => "/dlq/redrive",
            Bulk::Purge => "/dlq/purge",
        }
    }
}

/// The service a queue or service name means, or a refusal listing the names.
pub(crate) fn service(arg: &str) -> Result<Service, CliError> {
    owning_service(arg).map_err(CliError::Refused)
}

/// The service's dead letters grouped by cause and type (`GET /dlq`).
pub(crate) async fn groups(ctx: &Context, service: Service) -> anyhow::Result<Value> {
    ctx.get_ok(service, "/dlq").await
}

/// A page of the dead letters `filter` matches (`GET /dlq/messages`).
pub(crate) async fn messages(
    ctx: &Context,
    service: Service,
    filter: &Filter,
    offset: u32,
    limit: u32,
) -> anyhow::Result<Value> {
    let (offset, limit) = (offset.to_string(), limit.to_string());
    let mut pairs = filter.pairs();
    pairs.extend([("offset", offset.as_str()), ("limit", limit.as_str())]);
    ctx.get_ok(service, &with_query("/dlq/messages", &pairs))
        .await
}

/// How many dead letters `filter` matches for `bulk`, and how many the queue holds:
/// `{"matched", "messages"}`; nothing changes.
pub(crate) async fn dry_run(
    ctx: &Context,
    service: Service,
    bulk: Bulk,
    filter: &Filter,
) -> anyhow::Result<Value> {
    ctx.post_ok(
        service,
        bulk.path(),
        &json!({"filter": filter, "dry_run": true}),
    )
    .await
}

/// Starts `bulk` on the dead letters `filter` matches; the service answers the job.
pub(crate) async fn start(
    ctx: &Context,
    service: Service,
    bulk: Bulk,
    filter: &Filter,
) -> anyhow::Result<Value> {
    let mut body = json!({"filter": filter, "dry_run": false});
    if bulk == Bulk::Purge {
        // The caller asked the operator (or was told --yes) before this.
        body["confirm"] = json!(true);
    }
    ctx.post_ok(service, bulk.path(), &body).await
}

/// Starts an edited replay of `message_id` with `payload`; the service answers the job.
pub(crate) async fn start_edit(
    ctx: &Context,
    service: Service,
    message_id: &str,
    payload: &Value,
) -> anyhow::Result<Value> {
    ctx.post_ok(
        service,
        "/dlq/edit",
        &json!({"message_id": message_id, "payload": payload}),
    )
    .await
}

/// One job of the service (`GET /dlq/jobs/{id}`).
pub(crate) async fn job(ctx: &Context, service: Service, id: &str) -> anyhow::Result<Value> {
    ctx.get_ok(service, &path(&["dlq", "jobs", id])).await
}

/// The service's newest jobs (`GET /dlq/jobs`).
pub(crate) async fn jobs(ctx: &Context, service: Service, limit: u32) -> anyhow::Result<Value> {
    ctx.get_ok(service, &format!("/dlq/jobs?limit={limit}"))
        .await
}

/// Reads `job` again until it has ended, calling `progress` with each new state; stops
/// with a refusal naming the job when it shows no progress for [`JOB_IDLE`].
pub(crate) async fn follow(
    ctx: &Context,
    service: Service,
    mut job: Value,
    mut progress: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    let id = job["id"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| job["id"].as_i64().map(|n| n.to_string()))
        .ok_or_else(|| anyhow::anyhow!("{} answered a job without an id: {job}", service.name()))?;
    let mut last_change = Instant::now();
    progress(&job);
    while !job_ended(&job) {
        if last_change.elapsed() > JOB_IDLE {
            return Err(CliError::Refused(format!(
                "job {id} of {} made no progress for {} s; it goes on in the service: \
                 see `sagactl dlq jobs {} {id}`",
                service.name(),
                JOB_IDLE.as_secs(),
                service.name()
            ))
            .into());
        }
        tokio::time::sleep(JOB_POLL).await;
        let next = self::job(ctx, service, &id).await?;
        if next["done"] != job["done"] || next["status"] != job["status"] {
            last_change = Instant::now();
            progress(&next);
        }
        job = next;
    }
    Ok(job)
}
