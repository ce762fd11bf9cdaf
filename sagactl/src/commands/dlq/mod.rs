//! `sagactl dlq list|groups|show|redrive|purge|edit|jobs`: the dead-letter queues.
//!
//! `list` counts each queue over AMQP (exact, and it works with a service down). Everything
//! else goes through the owning service's HTTP API ([`api`]): the service reads its own
//! queue, does the AMQP work of a redrive, an edit or a purge, follows each message to its
//! end, and records who asked (the token's `sub`) in its audit log. sagactl never moves a
//! dead letter itself, so no change goes unrecorded.

mod act;
pub(crate) mod api;

use anyhow::Context as _;
use lapin::Channel;
use serde_json::{Value, json};

use crate::cli::DlqCommand;
use crate::render::field;
use sagactl::context::{Context, Service};
use sagactl::dead_letters::job_summary;
use sagactl::output;

/// Jobs `dlq jobs` lists.
const JOBS_SHOWN: u32 = 20;

pub(super) async fn run(ctx: &Context, cmd: DlqCommand) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List => list(ctx).await,
        DlqCommand::Groups { queue } => groups(ctx, api::service(&queue)?).await,
        DlqCommand::Show {
            queue,
            filter,
            limit,
            offset,
        } => {
            let service = api::service(&queue)?;
            let listed = api::messages(ctx, service, &filter.filter(), offset, limit).await?;
            output::list(ctx, &listed, "dead_letters", render_messages);
            Ok(())
        }
        DlqCommand::Redrive {
            queue,
            filter,
            edit: true,
            ..
        } => {
            let id = filter
                .message_id
                .map(|id| id.to_string())
                .unwrap_or_default();
            act::edit(ctx, api::service(&queue)?, &id, None).await
        }
        DlqCommand::Redrive {
            queue,
            filter,
            dry_run,
            yes,
            edit: false,
        } => {
            let how = act::How { dry_run, yes };
            act::bulk(
                ctx,
                api::service(&queue)?,
                api::Bulk::Redrive,
                &filter.filter(),
                how,
            )
            .await
        }
        DlqCommand::Purge {
            queue,
            filter,
            dry_run,
            yes,
        } => {
            let how = act::How { dry_run, yes };
            act::bulk(
                ctx,
                api::service(&queue)?,
                api::Bulk::Purge,
                &filter.filter(),
                how,
            )
            .await
        }
        DlqCommand::Edit {
            queue,
            message_id,
            payload,
        } => act::edit(ctx, api::service(&queue)?, &message_id.to_string(), payload).await,
        DlqCommand::Jobs { queue, job_id } => jobs(ctx, api::service(&queue)?, job_id).await,
    }
}

/// The exact number of messages in `queue`, read with a passive declare.
async fn count(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    platform::operator::scan::depth(channel, queue)
        .await
        .with_context(|| format!("queue {queue} does not exist; has its service ever started?"))
}

/// Each dead-letter queue with its exact message count.
async fn counts(ctx: &Context) -> anyhow::Result<Value> {
    let conn = ctx.broker("dlq").await?;
    let result = async {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| ctx.broker_unreachable(e))?;
        let mut rows = Vec::new();
        for s in Service::ALL {
            let name = format!("{}.dlq", s.name());
            rows.push(json!({"queue": name, "messages": count(&channel, &name).await?}));
        }
        anyhow::Ok(json!({"queues": rows}))
    }
    .await;
    sagactl::context::close(conn).await;
    result
}

async fn list(ctx: &Context) -> anyhow::Result<()> {
    output::list(ctx, &counts(ctx).await?, "queues", |v| {
        let mut s = format!("{:<20} {:>8}\n", "QUEUE", "MESSAGES");
        for r in v["queues"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "{:<20} {:>8}\n",
                r["queue"].as_str().unwrap_or("?"),
                r["messages"].as_i64().unwrap_or(0)
            ));
        }
        s.trim_end().to_owned()
    });
    Ok(())
}

async fn groups(ctx: &Context, service: Service) -> anyhow::Result<()> {
    let grouped = api::groups(ctx, service).await?;
    output::list(ctx, &grouped, "groups", render_groups);
    Ok(())
}

fn render_groups(v: &Value) -> String {
    let mut s = format!("{}: {} messages\n", field(v, "queue"), field(v, "messages"));
    if v["scanned"].as_u64() < v["messages"].as_u64() {
        s.push_str(&format!("(grouped the first {})\n", field(v, "scanned")));
    }
    s.push_str(&format!(
        "{:<18} {:<18} {:>7}  {:<25} {:<25} {}\n",
        "CAUSE", "TYPE", "COUNT", "FIRST SEEN", "LAST SEEN", "EXAMPLE"
    ));
    for g in v["groups"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:<18} {:<18} {:>7}  {:<25} {:<25} {}\n",
            field(g, "cause"),
            field(g, "type"),
            field(g, "count"),
            field(g, "first_seen"),
            field(g, "last_seen"),
            field(&g["example"], "message_id"),
        ));
    }
    s.trim_end().to_owned()
}

/// One dead letter as `dlq show` and `dlq edit` print it.
pub(crate) fn render_dead_letter(m: &Value) -> String {
    format!(
        "message  {}\ntype     {} v{}  cause {}\nerror    {}\norder    {}  customer {}\nfrom     {}  attempts {}  failed at {}\nbody     {}\n",
        field(m, "message_id"),
        field(m, "type"),
        field(m, "version"),
        field(m, "cause"),
        field(m, "error"),
        field(m, "order_id"),
        field(m, "customer_id"),
        field(m, "queue"),
        field(m, "attempts"),
        field(m, "failed_at"),
        field(m, "body"),
    )
}

fn render_messages(v: &Value) -> String {
    let shown = v["dead_letters"].as_array().cloned().unwrap_or_default();
    let offset = v["offset"].as_u64().unwrap_or(0);
    let mut s = format!(
        "{}: {} messages, {} match",
        field(v, "queue"),
        field(v, "messages"),
        field(v, "matched")
    );
    if !shown.is_empty() {
        s.push_str(&format!(
            " (shown {}–{})",
            offset + 1,
            offset + shown.len() as u64
        ));
    }
    s.push('\n');
    for m in &shown {
        s.push('\n');
        s.push_str(&render_dead_letter(m));
    }
    s.trim_end().to_owned()
}

async fn jobs(ctx: &Context, service: Service, id: Option<String>) -> anyhow::Result<()> {
    if let Some(id) = id {
        let job = api::job(ctx, service, &id).await?;
        output::show(ctx, &job, job_summary);
        return Ok(());
    }
    let listed = api::jobs(ctx, service, JOBS_SHOWN).await?;
    output::list(ctx, &listed, "jobs", |v| {
        let mut s = format!(
            "{:<38} {:<8} {:<12} {:<16} {:>8} {:>8}  {}\n",
            "JOB", "KIND", "STATUS", "ACTOR", "MATCHED", "DONE", "STARTED"
        );
        for j in v["jobs"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "{:<38} {:<8} {:<12} {:<16} {:>8} {:>8}  {}\n",
                field(j, "id"),
                field(j, "kind"),
                field(j, "status"),
                field(j, "actor"),
                field(j, "matched"),
                field(j, "done"),
                field(j, "started_at"),
            ));
        }
        s.trim_end().to_owned()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_show_cause_type_count_and_an_example() {
        let text = render_groups(&json!({"queue": "inventory-svc.dlq", "messages": 101,
            "scanned": 101, "groups": [{"cause": "bad_payload", "type": "OrderCreated",
            "count": 100, "first_seen": "2026-12-01T10:00:00Z", "last_seen": "2026-12-01T10:05:00Z",
            "example": {"message_id": "m-1"}}, {"cause": "delivery_limit", "type": null,
            "count": 1, "example": {"message_id": "m-2"}}]}));
        assert!(
            text.starts_with("inventory-svc.dlq: 101 messages\nCAUSE"),
            "{text}"
        );
        assert!(
            text.contains("bad_payload        OrderCreated           100"),
            "{text}"
        );
        assert!(text.contains("m-1"), "{text}");
        assert!(text.contains("delivery_limit     -"), "{text}");
        let partial =
            render_groups(&json!({"queue": "q", "messages": 10, "scanned": 5, "groups": []}));
        assert!(partial.contains("grouped the first 5"), "{partial}");
    }

    #[test]
    fn a_listing_says_how_many_match_and_which_are_shown() {
        let text = render_messages(&json!({"queue": "order-svc.dlq", "messages": 9,
            "matched": 3, "offset": 2, "dead_letters": [{"message_id": "m-3",
            "error": "not_json: expected value"}]}));
        assert!(
            text.starts_with("order-svc.dlq: 9 messages, 3 match (shown 3–3)"),
            "{text}"
        );
        assert!(text.contains("error    not_json: expected value"), "{text}");
    }
}
