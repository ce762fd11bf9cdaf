//! Load shedding for `POST /orders`: above capacity order-svc refuses new orders (503
//! `overloaded` with `Retry-After`) instead of accepting them into a queue that grows for
//! seconds.
//!
//! Accepting an order is cheap (one transaction); running its saga is not. When orders
//! come in faster than the three services finish sagas, the difference piles up as
//! messages in the broker's input queues of inventory-svc and payment-svc, and every
//! accepted order waits behind all of them: latency grows without bound while throughput
//! stays flat. The work order-svc has accepted and not finished is what it can see of that
//! pile: the sagas still open (orders `pending` or `reserved`) and, while the broker is
//! away or slow, the events not yet published from its outbox. Bounding both bounds the
//! latency of the orders it does accept (by Little's law, about the open bound divided by
//! the saga throughput).
//!
//! Counting them for every request would put a scan on the hot path exactly when the
//! database is busiest, so [`BacklogSampler`] counts both every [`SAMPLE_EVERY`] with
//! counts that stop at the bound (through the partial indexes `outbox_unsent` and
//! `orders_open_by_deadline`), on a connection of its own so that it never waits behind the
//! requests it is there to shed, and publishes the result; the handler reads the last
//! sample for free ([`Admission`]). A sample may be one period old, so the orders this
//! process has let through since it was taken are added to it ([`Admitted`]): a burst
//! cannot pass a bound between two samples. A sample that cannot be taken (the
//! database away) leaves the last one, and one older than [`STALE_AFTER`] sheds nothing:
//! the database outage is answered 503 `unavailable` by the requests themselves, and a
//! recovered service must not refuse orders on what it counted before the outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use platform::ApiError;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the backlog is counted: short against the seconds a client is asked to wait.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Longest a sample may take (connecting included) before it counts as failed.
const SAMPLE_WITHIN: Duration = Duration::from_secs(1);

/// A sample older than this is not acted on: a few failed samples in a row, that is the
/// database away or not answering.
const STALE_AFTER: Duration = Duration::from_secs(3);

/// Largest bound accepted: every sample counts up to each bound, ten times a second.
const MAX_BOUND: u64 = 100_000;

/// What a bound is set on. Also the label values of the metrics: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BacklogKind {
    /// Outbox rows not yet published (`sent_at IS NULL`).
    Unpublished,
    /// Orders `pending` or `reserved`: sagas accepted and not finished.
    Open,
}

impl BacklogKind {
    fn label(self) -> &'static str {
        match self {
            BacklogKind::Unpublished => "unpublished_events",
            BacklogKind::Open => "open_sagas",
        }
    }

    /// Seconds a shed client is told to wait. Open sagas drain at the saga throughput
    /// (hundreds a second), so a second is enough to find room; unpublished events wait
    /// for the broker to come back, which takes longer than one retry.
    fn retry_after_secs(self) -> u64 {
        match self {
            BacklogKind::Open => 1,
            BacklogKind::Unpublished => 5,
        }
    }
}

/// The bounds past which `POST /orders` is shed (`SAGA_ORDER_MAX_UNPUBLISHED`,
/// `SAGA_ORDER_MAX_OPEN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogBounds {
    /// Unsent outbox rows at which new orders are shed.
    pub max_unpublished: u64,
    /// Open sagas at which new orders are shed.
    pub max_open: u64,
}

impl BacklogBounds {
    /// Far above what the test suites reach (tens of orders a second, some hundreds open
    /// during a broker outage), below what keeps a saturated stack's latency in seconds
    /// (docs/configuration.md).
    pub const DEFAULT: BacklogBounds = BacklogBounds {
        max_unpublished: 2000,
        max_open: 1000,
    };

    /// `SAGA_ORDER_MAX_UNPUBLISHED` (2000) and `SAGA_ORDER_MAX_OPEN` (1000).
    pub fn from_env() -> anyhow::Result<Self> {
        let bound = |name: &str, default: u64| -> anyhow::Result<u64> {
            check_bound(name, platform::config::env_parse(name, default)?)
        };
        Ok(BacklogBounds {
            max_unpublished: bound("SAGA_ORDER_MAX_UNPUBLISHED", Self::DEFAULT.max_unpublished)?,
            max_open: bound("SAGA_ORDER_MAX_OPEN", Self::DEFAULT.max_open)?,
        })
    }

    fn of(&self, kind: BacklogKind) -> u64 {
        match kind {
            BacklogKind::Unpublished => self.max_unpublished,
            BacklogKind::Open => self.max_open,
        }
    }
}

/// A bound is 1 to [`MAX_BOUND`]: 0 would refuse every order, and a huge one would make
/// every sample a long scan.
fn check_bound(name: &str, value: u64) -> anyhow::Result<u64> {
    if (1..=MAX_BOUND).contains(&value) {
        Ok(value)
    } else {
        Err(anyhow::anyhow!(
            "environment variable {name}={value} is out of range: it must be 1 to {MAX_BOUND}"
        ))
    }
}

/// The two counts of one sample, each at most its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backlog {
    pub(crate) unpublished: u64,
    pub(crate) open: u64,
}

impl Backlog {
    /// With `orders` more placed: each is one more open saga and one more event to publish.
    fn plus(self, orders: u64) -> Backlog {
        Backlog {
            unpublished: self.unpublished.saturating_add(orders),
            open: self.open.saturating_add(orders),
        }
    }

    fn of(&self, kind: BacklogKind) -> u64 {
        match kind {
            BacklogKind::Unpublished => self.unpublished,
            BacklogKind::Open => self.open,
        }
    }
}

/// A backlog and when it was counted (when the counting statement was sent).
#[derive(Debug, Clone, Copy)]
struct Sample {
    backlog: Backlog,
    at: Instant,
    /// [`Admissions::settled`] just before the count: the orders of this process the count
    /// sees. Every admission beyond it is added to the count.
    settled: u64,
}

/// This process's admitted orders, so that the orders let through since a sample count
/// before the next one: without them a burst would pass the bound by all it sends within
/// one sampling period, and every dip below the bound would let one such burst in.
#[derive(Debug, Default)]
struct Admissions {
    /// Orders let through so far.
    admitted: AtomicU64,
    /// Of those, the requests that have finished: committed (and so visible to any count
    /// that starts afterwards), refused or failed.
    settled: AtomicU64,
}

/// An order let through; dropped when its request has finished, which settles it.
#[derive(Debug)]
pub(crate) struct Admitted(Arc<Admissions>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.settled.fetch_add(1, Ordering::SeqCst);
    }
}

/// Why an order is shed: which backlog reached its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overload {
    pub(crate) kind: BacklogKind,
    pub(crate) seen: u64,
    pub(crate) bound: u64,
}

impl Overload {
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.kind.retry_after_secs()
    }
}

impl From<Overload> for ApiError {
    fn from(o: Overload) -> Self {
        let backlog = match o.kind {
            BacklogKind::Unpublished => format!("{} events wait to be published", o.seen),
            BacklogKind::Open => format!("{} orders are still in progress", o.seen),
        };
        let retry = o.retry_after_secs();
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "order-svc is overloaded: {backlog} (the bound is {}); \
                 retry after {retry} s with the same Idempotency-Key",
                o.bound
            ),
        )
        .retry_after(retry)
    }
}

/// The decision: shed when a backlog counted at `sampled_at` has reached its bound, unless
/// the count is too old at `now` to say anything. Unpublished events come first: when both
/// are full the broker is the cause, and its retry time is the longer.
pub(crate) fn shed(
    backlog: Backlog,
    bounds: BacklogBounds,
    sampled_at: Instant,
    now: Instant,
) -> Option<Overload> {
    if now.saturating_duration_since(sampled_at) > STALE_AFTER {
        return None;
    }
    [BacklogKind::Unpublished, BacklogKind::Open]
        .into_iter()
        .map(|kind| Overload {
            kind,
            seen: backlog.of(kind),
            bound: bounds.of(kind),
        })
        .find(|o| o.seen >= o.bound)
}

/// What `POST /orders` asks before any database work: the last sample and the orders let
/// through since, without I/O.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    bounds: BacklogBounds,
    latest: watch::Receiver<Option<Sample>>,
    admissions: Arc<Admissions>,
}

impl Admission {
    /// An [`Admitted`] to hold until the request has finished, or `Err` when the order
    /// must be shed (counted in `saga_orders_shed_total`).
    pub(crate) fn check(&self) -> Result<Admitted, Overload> {
        // Copied out at once: the borrow holds the channel's read lock.
        let latest = *self.latest.borrow();
        // The place is taken before deciding, so concurrent requests each count the others.
        let before = self.admissions.admitted.fetch_add(1, Ordering::SeqCst);
        // Nothing counted yet (the first moments after start): nothing to shed on.
        let overload = latest.and_then(|sample| {
            let backlog = sample.backlog.plus(before.saturating_sub(sample.settled));
            shed(backlog, self.bounds, sample.at, Instant::now())
        });
        let Some(overload) = overload else {
            return Ok(Admitted(self.admissions.clone()));
        };
        // Not let through after all: the place is given back, never settled.
        self.admissions.admitted.fetch_sub(1, Ordering::SeqCst);
        metrics::counter!("saga_orders_shed_total", "backlog" => overload.kind.label())
            .increment(1);
        Err(overload)
    }
}

/// Counts the backlog every [`SAMPLE_EVERY`] and publishes it to the [`Admission`]s.
#[derive(Debug)]
pub(crate) struct BacklogSampler {
    bounds: BacklogBounds,
    publish: watch::Sender<Option<Sample>>,
    admissions: Arc<Admissions>,
}

/// A sampler and the admission that reads it; the sampler is started once the pool exists.
pub(crate) fn sampler(bounds: BacklogBounds) -> (BacklogSampler, Admission) {
    let (publish, latest) = watch::channel(None);
    let admissions = Arc::new(Admissions::default());
    (
        BacklogSampler {
            bounds,
            publish,
            admissions: admissions.clone(),
        },
        Admission {
            bounds,
            latest,
            admissions,
        },
    )
}

/// Both counts in one statement, each stopping at its bound (`$1`, `$2`), so a sample
/// reads at most that many entries of the partial indexes `outbox_unsent` and
/// `orders_open_by_deadline`. The statuses are written out (not bound) so the planner can
/// match the index's predicate; they are `OrderStatus::OPEN` (checked by a test, which
/// reads the text as `count_backlog!(concat!())`). The text is written once, for the macro
/// named in the call, with what the call adds after it. The counts come as one array: a
/// checked statement is sent unprepared (`persistent(false)`) only if it has one column.
macro_rules! count_backlog {
    ($($then:ident)::+!($($more:tt)*)) => {
        $($then)::+!(
            r#"SELECT ARRAY[
                (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE sent_at IS NULL LIMIT $1) unsent),
                (SELECT count(*) FROM (SELECT 1 FROM orders WHERE status IN ('pending', 'reserved') LIMIT $2) open_orders)
               ] AS "backlog!""#
            $($more)*
        )
    };
}

impl BacklogSampler {
    /// Takes one sample on `conn`, publishes it to the admissions and sets the gauges;
    /// answers it.
    pub(crate) async fn sample_once(&self, conn: &mut PgConnection) -> sqlx::Result<Backlog> {
        let at = Instant::now();
        // Read before the statement starts: an order settled by then has committed, so the
        // count sees it; one settled later is added to the count as well (a moment counted
        // twice, never missed).
        let settled = self.admissions.settled.load(Ordering::SeqCst);
        let limit = |bound: u64| i64::try_from(bound).unwrap_or(i64::MAX);
        // Planned at each sample, never cached: a plan made while the orders were few
        // counts the open ones by reading the whole table, however large it grows.
        let counts = count_backlog!(sqlx::query_scalar!(
            ,
            limit(self.bounds.max_unpublished),
            limit(self.bounds.max_open),
        ))
        .persistent(false)
        .fetch_one(conn)
        .await?;
        let count = |i: usize| counts.get(i).map_or(0, |&n| u64::try_from(n).unwrap_or(0));
        let backlog = Backlog {
            unpublished: count(0),
            open: count(1),
        };
        // Published before the gauges are set: whoever sees a gauge's value may rely on
        // the admissions deciding on it already.
        self.publish.send_replace(Some(Sample {
            backlog,
            at,
            settled,
        }));
        for kind in [BacklogKind::Unpublished, BacklogKind::Open] {
            metrics::gauge!("saga_order_backlog", "backlog" => kind.label())
                .set(backlog.of(kind) as f64);
        }
        Ok(backlog)
    }

    /// One sample within [`SAMPLE_WITHIN`] on the sampler's own connection, opened first
    /// when there is none. Its own, not one of the pool's: at saturation the pool's HTTP
    /// connections have a queue of requests, and a count waiting behind the very requests
    /// it should shed would arrive late or go stale. Opened with the pool's current
    /// settings, so it follows a database failover.
    async fn sample_within(
        &self,
        pool: &PgPool,
        conn: &mut Option<PgConnection>,
    ) -> Result<Backlog, String> {
        let sample = async {
            let c = match conn {
                Some(c) => c,
                None => conn.insert(pool.connect_options().connect().await?),
            };
            self.sample_once(c).await
        };
        let outcome = match tokio::time::timeout(SAMPLE_WITHIN, sample).await {
            Ok(sampled) => sampled.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {SAMPLE_WITHIN:?}")),
        };
        if outcome.is_err() {
            // Broken or stuck: the next sample starts on a new connection.
            *conn = None;
        }
        outcome
    }

    /// Samples until shutdown. Logs when shedding starts and stops, and when sampling
    /// fails and recovers (not every 100 ms while the database is away).
    pub(crate) async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        let (mut conn, mut shedding, mut failing) = (None, None, false);
        loop {
            match self.sample_within(&pool, &mut conn).await {
                Ok(backlog) => {
                    if failing {
                        tracing::info!("backlog counting works again");
                        failing = false;
                    }
                    let now = Instant::now();
                    let overload = shed(backlog, self.bounds, now, now).map(|o| o.kind);
                    if overload != shedding {
                        log_change(overload, backlog);
                        shedding = overload;
                    }
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "cannot count the backlog; orders are not shed on old counts");
                    failing = true;
                }
                Err(_) => {}
            }
            if !messaging::amqp::pause(SAMPLE_EVERY, &shutdown).await {
                break;
            }
        }
        if let Some(conn) = conn
            && let Err(e) = conn.close().await
        {
            tracing::debug!(error = %e, "closing the backlog counting connection failed");
        }
    }
}

fn log_change(now: Option<BacklogKind>, backlog: Backlog) {
    match now {
        Some(kind) => tracing::warn!(
            backlog = kind.label(),
            unpublished = backlog.unpublished,
            open = backlog.open,
            "backlog at its bound: shedding new orders"
        ),
        None => tracing::info!(
            unpublished = backlog.unpublished,
            open = backlog.open,
            "backlog below its bounds: accepting orders again"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::OrderStatus;

    const BOUNDS: BacklogBounds = BacklogBounds {
        max_unpublished: 20,
        max_open: 10,
    };

    fn backlog(unpublished: u64, open: u64) -> Backlog {
        Backlog { unpublished, open }
    }

    #[test]
    fn orders_are_accepted_below_both_bounds() {
        let now = Instant::now();
        assert_eq!(shed(backlog(19, 9), BOUNDS, now, now), None);
        assert_eq!(shed(backlog(0, 0), BOUNDS, now, now), None);
    }

    #[test]
    fn open_sagas_at_their_bound_shed_with_a_one_second_retry() {
        let now = Instant::now();
        let o = shed(backlog(0, 10), BOUNDS, now, now).expect("shed");
        assert_eq!(
            o,
            Overload {
                kind: BacklogKind::Open,
                seen: 10,
                bound: 10
            }
        );
        assert_eq!(o.retry_after_secs(), 1);
    }

    #[test]
    fn unpublished_events_at_their_bound_shed_first() {
        let now = Instant::now();
        let o = shed(backlog(20, 10), BOUNDS, now, now).expect("shed");
        assert_eq!(o.kind, BacklogKind::Unpublished);
        assert_eq!(o.retry_after_secs(), 5);
    }

    #[test]
    fn a_stale_sample_sheds_nothing() {
        let sampled = Instant::now();
        let full = backlog(20, 10);
        let fresh = sampled + STALE_AFTER;
        assert!(shed(full, BOUNDS, sampled, fresh).is_some());
        let stale = fresh + Duration::from_millis(1);
        assert_eq!(shed(full, BOUNDS, sampled, stale), None);
        // A sample stamped after `now` (taken while the request ran) still counts.
        assert!(shed(full, BOUNDS, stale, sampled).is_some());
    }

    #[test]
    fn the_refusal_says_what_is_full_and_when_to_come_back() {
        let error = ApiError::from(Overload {
            kind: BacklogKind::Open,
            seen: 10,
            bound: 10,
        });
        assert_eq!(error.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.code, "overloaded");
        assert_eq!(error.retry_after, Some(1));
        assert!(error.message.contains("10 orders are still in progress"));
        assert!(error.message.contains("retry after 1 s"));
    }

    fn publish(sampler: &BacklogSampler, open: u64, settled: u64) {
        sampler.publish.send_replace(Some(Sample {
            backlog: backlog(0, open),
            at: Instant::now(),
            settled,
        }));
    }

    #[test]
    fn nothing_is_shed_before_the_first_sample() {
        let (_sampler, admission) = sampler(BOUNDS);
        assert!(admission.check().is_ok());
    }

    #[test]
    fn an_admission_sheds_on_the_published_sample() {
        let (sampler, admission) = sampler(BOUNDS);
        publish(&sampler, 10, 0);
        assert_eq!(
            admission.check().map_err(|o| o.kind).err(),
            Some(BacklogKind::Open)
        );
    }

    #[test]
    fn orders_let_through_since_the_last_sample_count_toward_the_bound() {
        let (sampler, admission) = sampler(BOUNDS);
        publish(&sampler, 7, 0);
        let admitted: Vec<Admitted> = (0..3).map(|_| admission.check().unwrap()).collect();
        let shed = admission.check().unwrap_err();
        assert_eq!((shed.seen, shed.bound), (10, 10));
        // Finished, but not yet in a sample: they still count.
        drop(admitted);
        assert!(admission.check().is_err());
        // A sample taken after they settled sees them (7 + 3 open), and only them: the
        // shed requests took no place.
        publish(&sampler, 10, 3);
        assert_eq!(admission.check().unwrap_err().seen, 10);
        // Their sagas finished: room again.
        publish(&sampler, 9, 3);
        assert!(admission.check().is_ok());
    }

    #[test]
    fn bounds_are_one_to_the_maximum() {
        assert_eq!(check_bound("SAGA_ORDER_MAX_OPEN", 1).unwrap(), 1);
        assert_eq!(
            check_bound("SAGA_ORDER_MAX_OPEN", MAX_BOUND).unwrap(),
            MAX_BOUND
        );
        for bad in [0, MAX_BOUND + 1] {
            let e = check_bound("SAGA_ORDER_MAX_OPEN", bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "environment variable SAGA_ORDER_MAX_OPEN={bad} is out of range: \
                     it must be 1 to {MAX_BOUND}"
                )
            );
        }
    }

    #[test]
    fn the_open_count_names_exactly_the_open_statuses() {
        let listed = format!(
            "status IN ({})",
            OrderStatus::OPEN
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        const COUNT_BACKLOG: &str = count_backlog!(concat!());
        assert!(COUNT_BACKLOG.contains(&listed), "{COUNT_BACKLOG}");
    }
}
