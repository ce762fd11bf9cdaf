//! The pure parts of the operator's dead-letter triage and audit reading, shared by
//! `sagactl dlq`, `sagactl audit`, `sagactl find` and the explorer, which all go through
//! the owning service's HTTP API (the service does the AMQP work and records who asked):
//! which dead letters a filter selects and how it is written as a query or a request
//! body; a time given as an RFC 3339 instant or as an age (`15m` ago); a job's outcome as
//! text; and the merge of the three services' audit pages, newest first, with one cursor.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::context::Service;
use crate::triage::parse_age;

/// Which dead letters an action or a listing takes; every field is optional and they all
/// must hold. Serialised as the services' `filter` object, absent fields left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The `x-saga-error` class (`bad_payload`) or the broker's reason (`delivery_limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Failed at or after this instant (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Failed before this instant (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

impl Filter {
    /// The filter as `(name, value)` pairs of a query string.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("type", &self.event_type),
            ("cause", &self.cause),
            ("since", &self.since),
            ("until", &self.until),
            ("order_id", &self.order_id),
            ("customer_id", &self.customer_id),
            ("message_id", &self.message_id),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }

    /// True when the filter selects every dead letter.
    pub fn is_everything(&self) -> bool {
        self.pairs().is_empty()
    }

    /// The filter as people read it: `cause=bad_payload type=OrderCreated`, or `all`.
    pub fn describe(&self) -> String {
        if self.is_everything() {
            return "all".to_owned();
        }
        let parts: Vec<String> = self
            .pairs()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.join(" ")
    }
}

/// `path` with `pairs` as its query string, each value percent-encoded.
pub fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return path.to_owned();
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{path}?{query}")
}

/// A time as the operator writes it: an RFC 3339 instant, or an age meaning that long
/// before `now` (`15m`, `2h`, `1d`); returned as RFC 3339 in UTC.
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<String, String> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at
            .with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::Secs, true));
    }
    let age = parse_age(text).map_err(|_| {
        format!("{text:?} is neither an instant (2026-12-01T10:00:00Z) nor an age (15m, 2h, 1d)")
    })?;
    let age = chrono::Duration::from_std(age).map_err(|_| format!("{text:?} is too long ago"))?;
    let at = now
        .checked_sub_signed(age)
        .ok_or_else(|| format!("{text:?} is too long ago"))?;
    Ok(at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// The service whose dead-letter queue a name means: `order-svc` and `order-svc.dlq` both
/// mean order-svc's.
pub fn owning_service(arg: &str) -> Result<Service, String> {
    let name = arg.strip_suffix(".dlq").unwrap_or(arg);
    Service::ALL
        .into_iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| {
            format!(
                "{arg:?} is not a dead-letter queue; use one of {}",
                Service::ALL.map(|s| format!("{}.dlq", s.name())).join(", ")
            )
        })
}

/// Whether a job has ended (`done`, `failed` or `interrupted`).
pub fn job_ended(job: &Value) -> bool {
    job["status"].as_str().is_some_and(|s| s != "running")
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// A job's progress on one line: `redrive: 3 of 10 done`.
pub fn job_progress(job: &Value) -> String {
    format!(
        "{} {}: {} of {} done",
        job["kind"].as_str().unwrap_or("job"),
        job["status"].as_str().unwrap_or("?"),
        count(job, "done"),
        count(job, "matched"),
    )
}

/// A job's outcome as people read it: what was applied, what was a duplicate, what came
/// back to the dead-letter queue and why, what is still on its way; for a purge, how many
/// were deleted; for an edit, the corrected message and what became of the original.
pub fn job_summary(job: &Value) -> String {
    let o = &job["outcome"];
    let kind = job["kind"].as_str().unwrap_or("job");
    let status = job["status"].as_str().unwrap_or("?");
    let mut s = match kind {
        "purge" => format!(
            "purge {status}: purged {} of {} matched",
            count(o, "purged"),
            count(job, "matched")
        ),
        _ => format!(
            "{kind} {status}: {} matched, {} applied, {} duplicate, {} back in the DLQ, {} still pending",
            count(job, "matched"),
            count(o, "applied"),
            count(o, "duplicate"),
            count(o, "dead_lettered"),
            count(o, "pending"),
        ),
    };
    if kind == "edit" {
        s.push_str(&format!(
            "\ncorrected message {}; the original was {}",
            o["corrected_message_id"].as_str().unwrap_or("-"),
            o["original"].as_str().unwrap_or("-"),
        ));
    }
    for r in o["reasons"].as_array().into_iter().flatten() {
        let ids: Vec<&str> = r["message_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        s.push_str(&format!(
            "\n  back in the DLQ: {} × {}: {}  ({})",
            count(r, "count"),
            r["cause"].as_str().unwrap_or("-"),
            r["error"].as_str().unwrap_or("-"),
            ids.join(", "),
        ));
    }
    if let Some(audit) = job["audit_id"].as_i64() {
        s.push_str(&format!("\naudit record {audit}"));
    }
    s
}

/// Where each service's audit listing goes on: from its newest record, from before a
/// record id, or nowhere (it has no older records). Written as one query value,
/// `order-svc:top,inventory-svc:41` (a service left out has no more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCursor(pub BTreeMap<String, Option<i64>>);

impl AuditCursor {
    /// Every service of `services` from its newest record.
    pub fn start(services: &[Service]) -> Self {
        AuditCursor(
            services
                .iter()
                .map(|s| (s.name().to_owned(), None))
                .collect(),
        )
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut at = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let bad = || format!("{part:?} is not a position of the audit listing (service:id)");
            let (service, id) = part.split_once(':').ok_or_else(bad)?;
            Service::ALL
                .into_iter()
                .find(|s| s.name() == service)
                .ok_or_else(bad)?;
            let id = match id {
                "top" => None,
                n => Some(n.parse().map_err(|_| bad())?),
            };
            at.insert(service.to_owned(), id);
        }
        Ok(AuditCursor(at))
    }

    pub fn render(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(s, id)| match id {
                Some(id) => format!("{s}:{id}"),
                None => format!("{s}:top"),
            })
            .collect();
        parts.join(",")
    }
}

/// One service's page of audit records (newest first) as it answered it, asked from
/// `cursor` (`None`: from its newest record).
pub struct AuditPage {
    pub service: String,
    pub cursor: Option<i64>,
    pub records: Vec<Value>,
    /// The service's `next_before`: there are older records.
    pub more: bool,
}

/// The newest `limit` records of `pages` together, each with its `service`, and where the
/// next page starts: after the last record taken of each service, unchanged for a service
/// none was taken of, and without a service whose records are all taken.
pub fn merge_audit(pages: Vec<AuditPage>, limit: usize) -> (Vec<Value>, Option<AuditCursor>) {
    let mut all: Vec<(String, Value)> = Vec::new();
    for page in &pages {
        for r in &page.records {
            let mut r = r.clone();
            r["service"] = Value::from(page.service.clone());
            all.push((page.service.clone(), r));
        }
    }
    // RFC 3339 instants in UTC sort as text; the id breaks ties within a service.
    all.sort_by(|(_, a), (_, b)| {
        let key = |r: &Value| (r["at"].as_str().unwrap_or("").to_owned(), r["id"].as_i64());
        key(b).cmp(&key(a))
    });
    all.truncate(limit);
    let mut next = BTreeMap::new();
    for page in pages {
        let taken: Vec<&Value> = all
            .iter()
            .filter(|(s, _)| *s == page.service)
            .map(|(_, r)| r)
            .collect();
        let last = taken.last().and_then(|r| r["id"].as_i64());
        let all_taken = taken.len() == page.records.len();
        if all_taken && !page.more {
            continue;
        }
        next.insert(page.service, last.or(page.cursor));
    }
    let records = all.into_iter().map(|(_, r)| r).collect();
    let next = (!next.is_empty()).then_some(AuditCursor(next));
    (records, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_filter_leaves_out_what_it_does_not_name() {
        let f = Filter {
            cause: Some("bad_payload".into()),
            customer_id: Some("a b&c".into()),
            ..Filter::default()
        };
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"cause": "bad_payload", "customer_id": "a b&c"})
        );
        assert_eq!(
            with_query("/dlq/messages", &f.pairs()),
            "/dlq/messages?cause=bad_payload&customer_id=a+b%26c"
        );
        assert_eq!(f.describe(), "cause=bad_payload customer_id=a b&c");
        assert_eq!(Filter::default().describe(), "all");
        assert_eq!(with_query("/dlq", &[]), "/dlq");
    }

    #[test]
    fn times_are_instants_or_ages_ago() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_time("15m", now).unwrap(), "2026-12-01T09:45:00Z");
        assert_eq!(
            parse_time("2026-12-01T11:00:00+01:00", now).unwrap(),
            "2026-12-01T10:00:00Z"
        );
        assert!(parse_time("yesterday", now).unwrap_err().contains("15m"));
    }

    #[test]
    fn a_dead_letter_queue_is_named_by_its_service() {
        assert_eq!(owning_service("order-svc").unwrap().name(), "order-svc");
        assert_eq!(
            owning_service("payment-svc.dlq").unwrap().name(),
            "payment-svc"
        );
        assert!(
            owning_service("orders")
                .unwrap_err()
                .contains("order-svc.dlq")
        );
    }

    #[test]
    fn a_redrive_summary_says_what_came_back_and_why() {
        let job = json!({"kind": "redrive", "status": "done", "matched": 3, "done": 3,
            "audit_id": 7, "outcome": {"applied": 1, "duplicate": 0, "dead_lettered": 2,
            "pending": 0, "reasons": [{"cause": "bad_payload", "error": "bad_payload: no sku",
            "count": 2, "message_ids": ["m-1", "m-2"]}]}});
        let text = job_summary(&job);
        assert!(
            text.starts_with("redrive done: 3 matched, 1 applied, 0 duplicate, 2 back in the DLQ"),
            "{text}"
        );
        assert!(
            text.contains("back in the DLQ: 2 × bad_payload: bad_payload: no sku  (m-1, m-2)"),
            "{text}"
        );
        assert!(text.contains("audit record 7"), "{text}");
        assert!(job_ended(&job));
        assert!(!job_ended(&json!({"status": "running"})));
        assert_eq!(job_progress(&job), "redrive done: 3 of 3 done");
        let purge =
            json!({"kind": "purge", "status": "done", "matched": 4, "outcome": {"purged": 4}});
        assert_eq!(job_summary(&purge), "purge done: purged 4 of 4 matched");
    }

    #[test]
    fn audit_pages_merge_newest_first_and_go_on_where_each_service_stopped() {
        let r = |id: i64, at: &str| json!({"id": id, "at": at});
        let pages = vec![
            AuditPage {
                service: "order-svc".into(),
                cursor: None,
                records: vec![r(9, "2026-12-01T10:00:05Z"), r(8, "2026-12-01T10:00:01Z")],
                more: true,
            },
            AuditPage {
                service: "inventory-svc".into(),
                cursor: Some(50),
                records: vec![r(41, "2026-12-01T10:00:03Z")],
                more: false,
            },
            AuditPage {
                service: "payment-svc".into(),
                cursor: None,
                records: vec![],
                more: false,
            },
        ];
        let (records, next) = merge_audit(pages, 2);
        let ids: Vec<_> = records
            .iter()
            .map(|r| (r["service"].clone(), r["id"].clone()))
            .collect();
        assert_eq!(
            ids,
            [
                (json!("order-svc"), json!(9)),
                (json!("inventory-svc"), json!(41))
            ]
        );
        let next = next.unwrap();
        assert_eq!(next.render(), "order-svc:9");
        assert_eq!(AuditCursor::parse(&next.render()).unwrap(), next);
        assert_eq!(
            AuditCursor::parse("inventory-svc:top").unwrap().0["inventory-svc"],
            None
        );
        assert!(AuditCursor::parse("bank:3").is_err());
        assert!(AuditCursor::parse("order-svc:x").is_err());
    }
}
