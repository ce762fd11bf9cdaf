//! Several broker addresses: the nodes of a RabbitMQ cluster named in one setting.
//!
//! `SAGA_AMQP_URL` may hold one URL or a comma-separated list (`amqp://…:5672/saga,
//! amqp://…:5673/saga`). A connection goes to the first node that answers; each attempt
//! starts one node further on than the last, so the connections of a process (consumer,
//! relay loops, …) spread over the cluster, and a component that lost its node tries the
//! others before coming back to it. Nothing here retries for long: callers own the backoff
//! between rounds (the consumer's and the relay's reconnect loops).
//!
//! What makes failover safe is elsewhere: a delivery not acked on the lost connection comes
//! again from the quorum queue and the inbox makes it a no-op; an outbox row whose confirm
//! was outstanding stays unsent and is published again (see [`crate::outbox`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// How long one node may take to accept a connection before the next is tried. A node that
/// is down on a reachable host refuses at once; a host that is gone (a node's pod rescheduled)
/// would otherwise hold the attempt for the operating system's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest AMQP frame asked for when the URL names none (`?frame_max=`). The client
/// keeps a read and a write buffer of 32 frames per connection, zeroed up front: at the
/// broker's default of 128 KiB that is 8 MiB resident per connection, most of a service's
/// memory. The saga's messages are a few hundred bytes, and a larger one (up to the 256 KiB
/// the envelope allows) simply travels in several frames.
const FRAME_MAX: u32 = 16 * 1024;

/// `url` parsed, with [`FRAME_MAX`] unless it asks for another frame size.
fn with_frame_max(url: &str) -> lapin::Result<lapin::uri::AMQPUri> {
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(|e: String| {
        lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid broker URL {}: {e}", redact_one(url)),
        ))
    })?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Ok(uri)
}

/// Where the next connection attempt starts in the list; shared by the whole process.
static NEXT_NODE: AtomicUsize = AtomicUsize::new(0);

/// The URLs in a setting: split on commas, blanks ignored. A setting whose pieces are not
/// all URLs (`scheme://…`) is one URL that happens to hold a comma, and stays whole.
pub fn urls(setting: &str) -> Vec<&str> {
    let list: Vec<&str> = setting
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if list.iter().all(|u| u.contains("://")) {
        list
    } else {
        vec![setting.trim()]
    }
}

/// The first URL of the setting (what a single-node tool such as the vhost lookup reads).
pub fn first_url(setting: &str) -> &str {
    urls(setting).first().copied().unwrap_or("")
}

/// Applies `f` to each URL of the setting and joins the results with commas again.
pub(crate) fn map_each(setting: &str, f: impl Fn(&str) -> String) -> String {
    let list = urls(setting);
    if list.len() <= 1 {
        return f(setting.trim());
    }
    list.into_iter().map(f).collect::<Vec<_>>().join(",")
}

/// [`map_each`] for a fallible `f`: the first error wins.
pub fn try_map_each<E>(setting: &str, f: impl Fn(&str) -> Result<String, E>) -> Result<String, E> {
    let mapped: Result<Vec<String>, E> = urls(setting).into_iter().map(f).collect();
    Ok(mapped?.join(","))
}

/// One node's URL with its password replaced, for logs and error messages.
pub(crate) fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// The order in which one attempt tries the nodes: every node once, starting at `start`.
fn rotation(len: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |i| (start + i) % len.max(1))
}

/// Connects to the first node of `setting` that accepts; the error of the last one tried
/// when none does.
pub(crate) async fn connect_any(setting: &str, name: &str) -> lapin::Result<Connection> {
    let list = urls(setting);
    let props = || ConnectionProperties::default().with_connection_name(name.into());
    if list.len() <= 1 {
        return Connection::connect_uri(with_frame_max(setting.trim())?, props()).await;
    }
    let start = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
    let mut last_error = None;
    for i in rotation(list.len(), start) {
        let url = list[i];
        let error = match tokio::time::timeout(CONNECT_TIMEOUT, async {
            Connection::connect_uri(with_frame_max(url)?, props()).await
        })
        .await
        {
            Ok(Ok(conn)) => {
                tracing::debug!(connection = name, node = %redact_one(url), "connected");
                return Ok(conn);
            }
            Ok(Err(e)) => e,
            Err(_) => lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {CONNECT_TIMEOUT:?}"),
            )),
        };
        tracing::info!(connection = name, node = %redact_one(url), error = %error, "broker node unreachable; trying the next");
        last_error = Some(error);
    }
    Err(last_error.unwrap_or_else(|| {
        lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no broker URL configured",
        ))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_on_commas_and_blanks_are_ignored() {
        assert_eq!(
            urls("amqp://a:1/saga, amqp://b:2/saga,,"),
            vec!["amqp://a:1/saga", "amqp://b:2/saga"]
        );
        assert_eq!(urls("amqp://a/saga"), vec!["amqp://a/saga"]);
        assert_eq!(first_url(" amqp://a/saga ,amqp://b/saga"), "amqp://a/saga");
        // libpq's own multi-host form is one URL.
        assert_eq!(
            urls("postgres://h1,h2/orders"),
            vec!["postgres://h1,h2/orders"]
        );
    }

    #[test]
    fn each_attempt_tries_every_node_once_from_a_moving_start() {
        assert_eq!(rotation(3, 0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(rotation(3, 4).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(rotation(1, 7).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn every_password_of_a_list_is_redacted() {
        assert_eq!(
            crate::amqp::redact_url("amqp://u:p1@a:1/saga,amqp://u:p2@b:2/saga"),
            "amqp://u:***@a:1/saga,amqp://u:***@b:2/saga"
        );
    }
}
