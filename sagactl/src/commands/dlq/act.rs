//! The changes `sagactl dlq` asks a service to make: a redrive or a purge of the dead
//! letters a filter matches (a dry run first, then a question, then the job followed to
//! its end), and an edited replay of one dead letter. Each is a job of the service, which
//! records who asked; this module only asks, shows the progress and says how it ended.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::api::{self, Bulk};
use crate::render::field;
use sagactl::context::{CliError, Context, Service};
use sagactl::dead_letters::{Filter, job_progress, job_summary};
use sagactl::output;

/// How a bulk action goes: only counted, and whether to ask first.
#[derive(Debug, Clone, Copy)]
pub(super) struct How {
    pub dry_run: bool,
    pub yes: bool,
}

/// `dlq redrive` and `dlq purge`: counts the matches, asks, starts the job and follows it.
pub(super) async fn bulk(
    ctx: &Context,
    service: Service,
    bulk: Bulk,
    filter: &Filter,
    how: How,
) -> anyhow::Result<()> {
    let queue = format!("{}.dlq", service.name());
    let counted = api::dry_run(ctx, service, bulk, filter).await?;
    let matched = counted["matched"].as_u64().unwrap_or(0);
    let mut report = json!({
        "queue": queue,
        "filter": filter,
        "dry_run": how.dry_run,
        "matched": matched,
        "messages": counted["messages"],
        "job": null,
    });
    let verb = match bulk {
        Bulk::Redrive => "redriven",
        Bulk::Purge => "purged",
    };
    if how.dry_run || matched == 0 {
        if let (0, Some(id)) = (matched, &filter.message_id) {
            return Err(CliError::Refused(format!("no message {id} in {queue}")).into());
        }
        output::show(ctx, &report, |r| {
            format!(
                "{} of the {} messages of {queue} match ({}): {matched} would be {verb}",
                r["matched"],
                field(r, "messages"),
                filter.describe()
            )
        });
        return Ok(());
    }
    if !how.yes {
        let (question, refusal) = match bulk {
            Bulk::Redrive => (
                format!(
                    "send {matched} dead letters of {queue} ({}) back to {}?",
                    filter.describe(),
                    service.name()
                ),
                format!("not redriving {queue}"),
            ),
            Bulk::Purge => (
                format!(
                    "delete {matched} dead letters of {queue} ({})? This cannot be undone.",
                    filter.describe()
                ),
                format!("not purging {queue}"),
            ),
        };
        output::confirm(&question, &refusal)?;
    }
    let job = api::start(ctx, service, bulk, filter).await?;
    let job = follow(ctx, service, job).await?;
    report["job"] = job.clone();
    ended(ctx, &report, &job)
}

/// Follows `job` to its end, with a progress bar on a terminal and a line per step
/// elsewhere (on standard error, so standard output holds only the result).
async fn follow(ctx: &Context, service: Service, job: Value) -> anyhow::Result<Value> {
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal && !ctx.json {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let job = api::follow(ctx, service, job, |j| {
        bar.set_length(j["matched"].as_u64().unwrap_or(0));
        bar.set_position(j["done"].as_u64().unwrap_or(0));
        bar.set_message(j["status"].as_str().unwrap_or("").to_owned());
        if !terminal && !ctx.json {
            eprintln!("{}", job_progress(j));
        }
    })
    .await;
    bar.finish_and_clear();
    job
}

/// Prints how a job ended; a job that failed or was interrupted ends the command with
/// status 1.
fn ended(ctx: &Context, report: &Value, job: &Value) -> anyhow::Result<()> {
    match job["status"].as_str() {
        Some("done") => {
            output::show(ctx, report, |r| {
                let mut s = job_summary(&r["job"]);
                diff_lines(&r["job"]["outcome"]["diff"], &mut s);
                s
            });
            Ok(())
        }
        _ => {
            if ctx.json {
                output::json(report);
            }
            Err(CliError::Refused(job_summary(job)).into())
        }
    }
}

/// The changes an edit made to the payload, one per line.
fn diff_lines(diff: &Value, s: &mut String) {
    let Some(changes) = diff.as_array().filter(|d| !d.is_empty()) else {
        return;
    };
    s.push_str("\nchanged:");
    for c in changes {
        match (c.get("path"), c.get("before"), c.get("after")) {
            (Some(p), before, after) => s.push_str(&format!(
                "\n  {}: {} → {}",
                p.as_str().unwrap_or(&p.to_string()),
                before.unwrap_or(&Value::Null),
                after.unwrap_or(&Value::Null)
            )),
            _ => s.push_str(&format!("\n  {c}")),
        }
    }
}

/// `dlq edit`: the corrected payload from `--payload` (a file, or `-` for standard input)
/// or from `$EDITOR`, sent as a new message caused by the dead letter; followed to its end.
pub(super) async fn edit(
    ctx: &Context,
    service: Service,
    message_id: &str,
    payload: Option<PathBuf>,
) -> anyhow::Result<()> {
    let payload = match payload {
        Some(file) => read_payload(&file)?,
        None => {
            let original = dead_letter(ctx, service, message_id).await?;
            edited(&original["payload"], message_id)?
        }
    };
    if !payload.is_object() {
        return Err(CliError::Refused(
            "the corrected payload must be a JSON object, as the event's payload is".into(),
        )
        .into());
    }
    let job = api::start_edit(ctx, service, message_id, &payload).await?;
    let job = follow(ctx, service, job).await?;
    let report = json!({
        "queue": format!("{}.dlq", service.name()),
        "message_id": message_id,
        "job": job,
    });
    ended(ctx, &report, &report["job"])
}

/// The dead letter `message_id` of the service's queue, or a refusal saying it is not there.
pub(crate) async fn dead_letter(
    ctx: &Context,
    service: Service,
    message_id: &str,
) -> anyhow::Result<Value> {
    let filter = Filter {
        message_id: Some(message_id.to_owned()),
        ..Filter::default()
    };
    let listed = api::messages(ctx, service, &filter, 0, 1).await?;
    listed["dead_letters"]
        .as_array()
        .and_then(|d| d.first())
        .cloned()
        .ok_or_else(|| {
            CliError::Refused(format!("no message {message_id} in {}.dlq", service.name())).into()
        })
}

fn read_payload(file: &PathBuf) -> anyhow::Result<Value> {
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the payload from standard input")?;
        text
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the payload from {}", file.display()))?
    };
    serde_json::from_str(&text).map_err(|e| {
        CliError::Refused(format!(
            "the payload in {} is not JSON: {e}",
            file.display()
        ))
        .into()
    })
}

/// The payload after the operator edited it in `$EDITOR` (or `vi`), pretty-printed there.
fn edited(payload: &Value, message_id: &str) -> anyhow::Result<Value> {
    if payload.is_null() {
        return Err(CliError::Refused(format!(
            "message {message_id} has no JSON payload to edit; write the corrected payload \
             to a file and pass --payload FILE"
        ))
        .into());
    }
    let path = std::env::temp_dir().join(format!("sagactl-edit-{}.json", std::process::id()));
    std::fs::write(&path, format!("{payload:#}\n"))?;
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".to_owned());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .with_context(|| format!("cannot start the editor {editor:?}"))?;
    let text = std::fs::read_to_string(&path);
    // The edited copy was read (or the edit failed); a temporary file left behind harms
    // nothing.
    let _ = std::fs::remove_file(&path);
    if !status.success() {
        return Err(CliError::Refused(format!(
            "the editor exited with {status}; nothing was sent"
        ))
        .into());
    }
    let corrected: Value = serde_json::from_str(&text?).map_err(|e| {
        CliError::Refused(format!(
            "the edited payload is not JSON ({e}); nothing was sent"
        ))
    })?;
    if &corrected == payload {
        return Err(CliError::Refused(format!(
            "the payload is unchanged; nothing was sent (to send {message_id} back as it is, \
             use `sagactl dlq redrive --message-id {message_id}`)"
        ))
        .into());
    }
    Ok(corrected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edits_diff_is_one_line_per_change() {
        let mut s = String::new();
        diff_lines(
            &json!([{"path": "/delta", "before": -50, "after": -2}, {"op": "add"}]),
            &mut s,
        );
        assert_eq!(s, "\nchanged:\n  /delta: -50 → -2\n  {\"op\":\"add\"}");
        let mut none = String::new();
        diff_lines(&json!([]), &mut none);
        assert!(none.is_empty());
    }
}
