//! `sagactl audit`: the hands on the system, read from each service's audit log
//! (`GET /audit`, operators only) and merged newest first, each record with its service.
//! The explorer's audit page and `sagactl find` read it through [`read`] too.

use serde_json::{Value, json};

use crate::cli::AuditArgs;
use crate::render::field;
use sagactl::context::{CliError, Context, Service};
use sagactl::dead_letters::{AuditCursor, AuditPage, merge_audit, with_query};
use sagactl::output;

/// What an audit read selects; every field given must hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pub service: Option<Service>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub subject: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

pub(super) async fn run(ctx: &Context, args: AuditArgs) -> anyhow::Result<()> {
    let service = args
        .service
        .as_deref()
        .map(|s| sagactl::dead_letters::owning_service(s).map_err(CliError::Refused))
        .transpose()?;
    let query = Query {
        service,
        actor: args.actor,
        action: args.action,
        subject: args.subject,
        since: args.since,
        until: args.until,
    };
    let cursor = args
        .before
        .as_deref()
        .map(AuditCursor::parse)
        .transpose()
        .map_err(CliError::Refused)?;
    let page = read(ctx, &query, args.limit, cursor).await?;
    output::list(ctx, &page, "records", render);
    Ok(())
}

/// The newest `limit` records `query` selects across the services (from `cursor`, when
/// going on from an earlier page): `{"records", "next"}`, `next` the cursor of the page
/// after, or null at the oldest record.
pub(crate) async fn read(
    ctx: &Context,
    query: &Query,
    limit: u32,
    cursor: Option<AuditCursor>,
) -> anyhow::Result<Value> {
    let services: Vec<Service> = match query.service {
        Some(s) => vec![s],
        None => Service::ALL.to_vec(),
    };
    let cursor = cursor.unwrap_or_else(|| AuditCursor::start(&services));
    let limit_text = limit.to_string();
    let (mut pages, mut unavailable) = (Vec::new(), Vec::new());
    for service in services {
        // A service the cursor leaves out has no older records.
        let Some(before) = cursor.0.get(service.name()) else {
            continue;
        };
        let before_text = before.map(|b| b.to_string());
        let mut pairs: Vec<(&str, &str)> = [
            ("actor", &query.actor),
            ("action", &query.action),
            ("subject", &query.subject),
            ("since", &query.since),
            ("until", &query.until),
            ("before", &before_text),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect();
        pairs.push(("limit", &limit_text));
        // A service that does not answer is named, and the others' records still shown.
        let answer = match ctx.get_ok(service, &with_query("/audit", &pairs)).await {
            Ok(answer) => answer,
            Err(e) => {
                unavailable.push(json!({"service": service.name(), "error": format!("{e:#}")}));
                continue;
            }
        };
        pages.push(AuditPage {
            service: service.name().to_owned(),
            cursor: *before,
            records: answer["records"].as_array().cloned().unwrap_or_default(),
            more: !answer["next_before"].is_null(),
        });
    }
    let (records, next) = merge_audit(pages, limit as usize);
    Ok(json!({
        "records": records,
        "next": next.map(|c| c.render()),
        "unavailable": unavailable,
    }))
}

/// The ids a record names, joined.
fn subjects(r: &Value) -> String {
    let ids: Vec<&str> = r["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if ids.is_empty() {
        "-".to_owned()
    } else {
        ids.join(",")
    }
}

pub(crate) fn render(v: &Value) -> String {
    let mut s = format!(
        "{:<25} {:<14} {:<16} {:<17} {:<10} {}\n",
        "AT", "SERVICE", "ACTOR", "ACTION", "OUTCOME", "SUBJECTS"
    );
    for r in v["records"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:<25} {:<14} {:<16} {:<17} {:<10} {}\n",
            field(r, "at"),
            field(r, "service"),
            field(r, "actor"),
            field(r, "action"),
            field(r, "outcome"),
            subjects(r),
        ));
    }
    if let Some(next) = v["next"].as_str() {
        s.push_str(&format!("(older: add --before {next})\n"));
    }
    for u in v["unavailable"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "(not read: {}: {})\n",
            field(u, "service"),
            field(u, "error")
        ));
    }
    s.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_show_who_did_what_to_which_ids() {
        let text = render(&json!({"records": [{"at": "2026-12-01T10:00:00Z",
            "service": "inventory-svc", "actor": "ops-anna", "action": "replay",
            "outcome": "done", "subjects": ["m-1", "m-2"]}], "next": "inventory-svc:4"}));
        assert!(text.contains("ops-anna         replay"), "{text}");
        assert!(text.contains("m-1,m-2"), "{text}");
        assert!(
            text.ends_with("(older: add --before inventory-svc:4)"),
            "{text}"
        );
    }
}
