//! `sagactl scenario run <file|dir>…`: runs declarative saga scenarios (format in
//! `sagactl::scenario`) against the running stack and reports pass or fail per scenario,
//! with the differences on failure. Exit status 1 when any scenario fails.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::catalog::{Event, FundsDeposited, StockAdjusted};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use sagactl::scenario::{
    Expect, Names, Place, Publish, Scenario, Step, Wait, bind_payload, missing_events,
};

use crate::cli::parse_item;
use sagactl::context::{CliError, Context, Service, ok_or_refused};
use sagactl::output;

use sagactl::publish::publish_event;

/// The scenario files named: files as they are, directories for their `*.toml`, sorted.
pub(super) fn scenario_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else if p.exists() {
            files.push(p.clone());
        } else {
            return Err(CliError::Refused(format!("{} does not exist", p.display())).into());
        }
    }
    if files.is_empty() {
        return Err(CliError::Refused("no scenario files (*.toml) found".into()).into());
    }
    Ok(files)
}

pub(super) async fn run(ctx: &Context, paths: Vec<PathBuf>) -> anyhow::Result<()> {
    let files = scenario_files(&paths)?;
    let bar = if std::io::stderr().is_terminal() && !ctx.json {
        ProgressBar::new(files.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::new();
    for file in &files {
        bar.set_message(file.display().to_string());
        let started = Instant::now();
        let outcome = run_file(ctx, file).await;
        let (name, problems) = match outcome {
            Ok((name, problems)) => (name, problems),
            Err(e) => (file.display().to_string(), vec![format!("{e:#}")]),
        };
        results.push(json!({
            "file": file.display().to_string(),
            "name": name,
            "passed": problems.is_empty(),
            "problems": problems,
            "seconds": started.elapsed().as_secs_f64(),
        }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let failed = results.iter().filter(|r| r["passed"] == false).count();
    let report = json!({"scenarios": results, "passed": results.len() - failed, "failed": failed});
    let colour = output::use_color(ctx.color, std::io::stdout().is_terminal());
    output::show(ctx, &report, |r| render(r, colour));
    if failed > 0 {
        return Err(
            CliError::Refused(format!("{failed} of {} scenarios failed", results.len())).into(),
        );
    }
    Ok(())
}

fn render(report: &Value, colour: bool) -> String {
    let mut s = String::new();
    for r in report["scenarios"].as_array().into_iter().flatten() {
        let passed = r["passed"] == true;
        let mark = if passed {
            output::paint(colour, "32", "PASS")
        } else {
            output::paint(colour, "31", "FAIL")
        };
        s.push_str(&format!(
            "{mark}  {}  ({:.1}s, {})\n",
            r["name"].as_str().unwrap_or("?"),
            r["seconds"].as_f64().unwrap_or(0.0),
            r["file"].as_str().unwrap_or("?")
        ));
        for p in r["problems"].as_array().into_iter().flatten() {
            s.push_str(&format!("      {}\n", p.as_str().unwrap_or("?")));
        }
    }
    s.push_str(&format!(
        "{} passed, {} failed",
        report["passed"], report["failed"]
    ));
    s
}

/// The state of one run of one scenario.
struct Run<'a> {
    ctx: &'a Context,
    names: Names,
    orders: HashMap<String, Uuid>,
    messages: HashMap<String, Uuid>,
    /// Every envelope seen on the bus since the run started.
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Run<'_> {
    fn order_id(&mut self, reference: &str) -> Uuid {
        *self
            .orders
            .entry(reference.to_owned())
            .or_insert_with(Uuid::now_v7)
    }
}

async fn run_file(ctx: &Context, file: &Path) -> anyhow::Result<(String, Vec<String>)> {
    let text = std::fs::read_to_string(file)?;
    let scenario = Scenario::parse(&text)
        .map_err(|e| CliError::Refused(format!("{}: {e}", file.display())))?;
    let (conn, consumer) = sagactl::bus::watch(ctx, "scenario", &["#"]).await?;
    let seen = sagactl::bus::collect(consumer);
    let mut run = Run {
        ctx,
        names: Names {
            suffix: Uuid::new_v4().simple().to_string()[..8].to_owned(),
        },
        orders: HashMap::new(),
        messages: HashMap::new(),
        seen: seen.clone(),
    };
    let timeout = Duration::from_secs(scenario.timeout_secs);
    let result = async {
        given(&mut run, &scenario, timeout).await?;
        for (i, step) in scenario.when.iter().enumerate() {
            when(&mut run, step, timeout)
                .await
                .map_err(|e| anyhow::anyhow!("step {} ({}): {e:#}", i + 1, step_name(step)))?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let types = seen_types(&run, &seen);
            let problems = check(&mut run, &scenario.expect, &types).await?;
            if problems.is_empty() || Instant::now() > deadline {
                return Ok::<_, anyhow::Error>(problems);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    sagactl::context::close(conn).await;
    Ok((scenario.name, result?))
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Place(_) => "place",
        Step::Cancel(_) => "cancel",
        Step::Publish(_) => "publish",
        Step::Wait(_) => "wait",
    }
}

fn seen_types(run: &Run<'_>, seen: &Mutex<Vec<Value>>) -> Vec<String> {
    let ids: Vec<String> = run.orders.values().map(Uuid::to_string).collect();
    lock(seen)
        .iter()
        .filter(|e| {
            e["correlation_id"]
                .as_str()
                .is_some_and(|c| ids.iter().any(|i| i == c))
        })
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect()
}

/// The envelopes seen so far. The collector only pushes whole values, so a poisoned lock
/// still holds a consistent list.
fn lock(seen: &Mutex<Vec<Value>>) -> std::sync::MutexGuard<'_, Vec<Value>> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn poll<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError::Refused(format!("timed out waiting for {what}")).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn given(run: &mut Run<'_>, s: &Scenario, timeout: Duration) -> anyhow::Result<()> {
    let ctx = run.ctx;
    for (sku, qty) in &s.given.stock {
        let sku = run.names.sku(sku);
        publish_event(
            ctx,
            Event::StockAdjusted(StockAdjusted {
                sku: sku.clone(),
                delta: *qty,
            }),
        )
        .await?;
        poll(timeout, &format!("stock of {sku}"), || async {
            let (st, v) = ctx
                .call(
                    Service::Inventory,
                    Method::GET,
                    &format!("/stock/{sku}"),
                    None,
                    &[],
                )
                .await?;
            Ok(st.is_success() && v["available"] == json!(qty))
        })
        .await?;
    }
    for (customer, d) in &s.given.wallets {
        let customer = run.names.customer(customer);
        if d.amount > 0 {
            publish_event(
                ctx,
                Event::FundsDeposited(FundsDeposited {
                    customer_id: customer.clone(),
                    amount: d.amount,
                    currency: d.currency.clone(),
                }),
            )
            .await?;
            poll(timeout, &format!("wallet of {customer}"), || async {
                let (st, v) = ctx
                    .call(
                        Service::Payment,
                        Method::GET,
                        &format!("/wallets/{customer}"),
                        None,
                        &[],
                    )
                    .await?;
                Ok(st.is_success() && v["balance"] == json!(d.amount))
            })
            .await?;
        }
    }
    Ok(())
}

async fn when(run: &mut Run<'_>, step: &Step, timeout: Duration) -> anyhow::Result<()> {
    match step {
        Step::Place(p) => place(run, p).await,
        Step::Cancel(reference) => cancel(run, reference).await,
        Step::Publish(p) => publish(run, p).await,
        Step::Wait(Wait {
            order,
            event: Some(event),
            ..
        }) => wait_for_event(run, order, event, timeout).await,
        Step::Wait(Wait {
            order,
            status: Some(status),
            ..
        }) => wait_for_status(run, order, status, timeout).await,
        Step::Wait(Wait { order, .. }) => Err(CliError::Refused(format!(
            "wait for {order}: say which status or event to wait for"
        ))
        .into()),
    }
}

/// `place`: posts the order and remembers its id under the scenario's reference.
async fn place(run: &mut Run<'_>, p: &Place) -> anyhow::Result<()> {
    let items = p
        .items
        .iter()
        .map(|i| {
            parse_item(i).map(|mut it| {
                it.sku = run.names.sku(&it.sku);
                it
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::Refused)?;
    let body = json!({"customer_id": run.names.customer(&p.customer), "currency": p.currency, "items": items});
    let (st, v) = run
        .ctx
        .call(Service::Order, Method::POST, "/orders", Some(&body), &[])
        .await?;
    let v = ok_or_refused(st, v)?;
    let id: Uuid = v["order_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CliError::Refused("no order_id in the answer".into()))?;
    run.orders.insert(p.reference.clone(), id);
    Ok(())
}

async fn cancel(run: &mut Run<'_>, reference: &str) -> anyhow::Result<()> {
    let id = run.order_id(reference);
    let path = format!("/orders/{id}/cancel");
    let (st, v) = run
        .ctx
        .call(Service::Order, Method::POST, &path, None, &[])
        .await?;
    ok_or_refused(st, v).map(drop)
}

/// `publish`: an event with the scenario's names bound; a named message id is reused.
async fn publish(run: &mut Run<'_>, p: &Publish) -> anyhow::Result<()> {
    let mut ids = run.orders.clone();
    let payload = bind_payload(&p.data, &run.names, &mut |r| {
        ids.entry(r.to_owned())
            .or_insert_with(Uuid::now_v7)
            .to_string()
    });
    run.orders = ids;
    let t: events::EventType = p
        .event_type
        .parse()
        .map_err(|e| CliError::Refused(format!("{e}")))?;
    let mut envelope = sagactl::publish::operator_envelope(t, p.version, &payload, None)
        .map_err(CliError::Refused)?;
    if let Some(name) = &p.message_id {
        envelope.message_id = *run
            .messages
            .entry(name.clone())
            .or_insert(envelope.message_id);
    }
    sagactl::publish::publish_envelope(run.ctx, envelope).await?;
    Ok(())
}

async fn wait_for_event(
    run: &mut Run<'_>,
    order: &str,
    event: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let id = run.order_id(order).to_string();
    let seen = run.seen.clone();
    poll(
        timeout,
        &format!("{event} about {order} on the bus"),
        || {
            let found = lock(&seen)
                .iter()
                .any(|e| e["type"] == json!(event) && e["correlation_id"] == json!(id));
            async move { Ok(found) }
        },
    )
    .await
}

async fn wait_for_status(
    run: &mut Run<'_>,
    order: &str,
    status: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let id = run.order_id(order);
    let ctx = run.ctx;
    poll(
        timeout,
        &format!("order {order} to be {status}"),
        || async {
            let path = format!("/orders/{id}");
            let (st, v) = ctx
                .call(Service::Order, Method::GET, &path, None, &[])
                .await?;
            Ok(st.is_success() && v["status"] == json!(status))
        },
    )
    .await
}

/// A GET whose 404 is an answer (`null`), not a failure.
async fn get_or_null(ctx: &Context, service: Service, path: String) -> anyhow::Result<Value> {
    let (st, v) = ctx.call(service, Method::GET, &path, None, &[]).await?;
    Ok(if st == StatusCode::NOT_FOUND {
        Value::Null
    } else {
        v
    })
}

/// Each `field = want` of `fields` that `got` (a service's JSON) does not hold; a field
/// the service does not report compares as `null`.
fn field_differences<W>(
    label: &str,
    got: &Value,
    fields: &std::collections::BTreeMap<String, W>,
    want_json: impl Fn(&W) -> Value,
) -> Vec<String> {
    fields
        .iter()
        .filter_map(|(field, want)| {
            let value = got.get(field).unwrap_or(&Value::Null);
            (*value != want_json(want))
                .then(|| format!("{label}.{field}: expected {}, got {value}", want_json(want)))
        })
        .collect()
}

/// Every difference between what is expected and what the services report now.
async fn check(run: &mut Run<'_>, expect: &Expect, seen: &[String]) -> anyhow::Result<Vec<String>> {
    let ctx = run.ctx;
    let mut problems = Vec::new();
    for (reference, fields) in &expect.orders {
        let id = run.order_id(reference);
        let order = get_or_null(ctx, Service::Order, format!("/orders/{id}")).await?;
        problems.extend(field_differences(
            &format!("order {reference}"),
            &order,
            fields,
            toml_to_json,
        ));
    }
    for (sku, fields) in &expect.stock {
        let path = sagactl::context::path(&["stock", &run.names.sku(sku)]);
        let stock = get_or_null(ctx, Service::Inventory, path).await?;
        problems.extend(field_differences(
            &format!("stock {sku}"),
            &stock,
            fields,
            |w| json!(w),
        ));
    }
    for (customer, fields) in &expect.wallets {
        let path = sagactl::context::path(&["wallets", &run.names.customer(customer)]);
        let wallet = get_or_null(ctx, Service::Payment, path).await?;
        problems.extend(field_differences(
            &format!("wallet {customer}"),
            &wallet,
            fields,
            |w| json!(w),
        ));
    }
    let kept = [
        (
            "reservation",
            Service::Inventory,
            "reservations",
            &expect.reservations,
        ),
        ("payment", Service::Payment, "payments", &expect.payments),
    ];
    for (what, service, list, wants) in kept {
        for (reference, want) in wants {
            let id = run.order_id(reference);
            let found = get_or_null(ctx, service, format!("/{list}/{id}")).await?;
            // No reservation or payment at all is the status `none`.
            let got = found["status"].as_str().unwrap_or("none");
            if got != want {
                problems.push(format!("{what} of {reference}: expected {want}, got {got}"));
            }
        }
    }
    problems.extend(event_differences(expect, seen));
    Ok(problems)
}

/// Events expected on the bus but not seen, and events seen that must not be.
fn event_differences(expect: &Expect, seen: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let missing = missing_events(&expect.events, seen);
    if !missing.is_empty() {
        problems.push(format!(
            "events not seen on the bus: {}; seen: {}",
            missing.join(", "),
            seen.join(", ")
        ));
    }
    for absent in expect.absent_events.iter().filter(|a| seen.contains(a)) {
        problems.push(format!(
            "event {absent} was seen on the bus but must not be"
        ));
    }
    problems
}

fn toml_to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
