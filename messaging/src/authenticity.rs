//! Authentic events: a consumer accepts an event type only from the broker users of that
//! type's producer.
//!
//! RabbitMQ refuses a publish whose `user_id` property differs from the connection's user,
//! and every publisher here sets it ([`crate::publisher::ConfirmedPublisher`]), so
//! `user_id` says which credentials published a message. The users each producer of the
//! catalog ([`EventKind::producers`]) may publish as come from
//! `SAGA_PRODUCER_USERS_<PRODUCER>` (the producer's name in upper case with `_` for `-`,
//! e.g. `ORDER_SVC`: a comma-separated list), by default `guest` (local development) and
//! the per-service user of `deploy/` (the producer's own name).
//!
//! A message republished by a relay keeps its original publisher in
//! [`PUBLISHED_BY_HEADER`]: the service's own retry and dead-letter copies, and an
//! operator's DLQ replay. That header is believed only when the message's `user_id` is the
//! consuming service's own user or a user of the catalog's operator
//! ([`EventKind::operator`]); anyone else's header is ignored, so a copy injected into a
//! retry queue with another service's credentials stays that service's message and is
//! refused.
//!
//! An operator's event may name the person behind it in [`OPERATOR_HEADER`] (sagactl sets
//! it to its `--as`). Like the relay header, it is believed only from a user of the
//! catalog's operator ([`hand_sender`]); from anyone else it is a claim, recorded as one.

use std::collections::HashMap;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::audit::OPERATOR_HEADER;
use crate::envelope::header_str;
use crate::event::EventKind;

/// The broker user that first published a message relayed since.
pub const PUBLISHED_BY_HEADER: &str = "x-published-by";
/// The dead-letter code of a message from the wrong broker user.
pub(crate) const FORGED_PRODUCER: &str = "forged_producer";

/// Which broker users may publish as each producer, and who the operator is.
#[derive(Debug, Clone)]
pub(crate) struct ProducerUsers {
    by_producer: HashMap<String, Vec<String>>,
    operator: &'static str,
}

impl ProducerUsers {
    /// `SAGA_PRODUCER_USERS_<PRODUCER>` for every producer of the catalog of `K`.
    pub(crate) fn from_env<K: EventKind>() -> Self {
        let mut by_producer = HashMap::new();
        for producer in K::producers() {
            let var = format!(
                "SAGA_PRODUCER_USERS_{}",
                producer.to_ascii_uppercase().replace('-', "_")
            );
            let users = match std::env::var(&var) {
                Ok(list) if !list.trim().is_empty() => list
                    .split(',')
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .collect(),
                _ => vec!["guest".to_owned(), producer.to_owned()],
            };
            by_producer.insert(producer.to_owned(), users);
        }
        ProducerUsers {
            by_producer,
            operator: K::operator(),
        }
    }

    pub(crate) fn users_of(&self, producer: &str) -> &[String] {
        self.by_producer.get(producer).map_or(&[], Vec::as_slice)
    }

    fn may_publish_as(&self, user: &str, producer: &str) -> bool {
        self.users_of(producer).iter().any(|u| u == user)
    }
}

/// The broker user of an AMQP URL (`guest` when it names none, as the broker assumes).
pub(crate) fn user_of_url(url: &str) -> String {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_else(|_| "guest".to_owned())
}

/// Who published `props` as far as the consumer with broker user `own_user` can tell.
pub(crate) fn publisher_of(
    users: &ProducerUsers,
    props: &BasicProperties,
    own_user: &str,
) -> Option<String> {
    let user = props.user_id().as_ref()?.as_str().to_owned();
    let relayed_by_trusted = user == own_user || users.may_publish_as(&user, users.operator);
    if relayed_by_trusted && let Some(original) = header_str(props, PUBLISHED_BY_HEADER) {
        return Some(original);
    }
    Some(user)
}

/// Longest operator name kept from [`OPERATOR_HEADER`] (the rest is cut off).
const MAX_OPERATOR_CHARS: usize = 128;

/// Who is behind a message published by hand, as far as the consumer can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandSender {
    /// The broker user that published it ([`publisher_of`]): the `user_id`, or the original
    /// publisher of a copy relayed since by a trusted user.
    pub(crate) broker_user: Option<String>,
    /// The operator [`OPERATOR_HEADER`] names, when the broker user is the operator's.
    pub(crate) operator: Option<String>,
    /// A name the header gives from any other broker user: recorded, never believed.
    pub(crate) claimed: Option<String>,
}

impl HandSender {
    /// Who the record says acted: the operator named, else the broker user.
    pub(crate) fn actor(&self) -> String {
        self.operator
            .clone()
            .or_else(|| self.broker_user.clone())
            .unwrap_or_else(|| "unknown".to_owned())
    }
}

/// Who sent `props` by hand: the broker user [`publisher_of`] believes, and the operator
/// [`OPERATOR_HEADER`] names, believed only when that broker user is one of the catalog's
/// operator's (the users that may publish its events at all). A name from any other user
/// is kept apart as a claim.
pub(crate) fn hand_sender(
    users: &ProducerUsers,
    props: &BasicProperties,
    own_user: &str,
) -> HandSender {
    let broker_user = publisher_of(users, props, own_user);
    let named = header_str(props, OPERATOR_HEADER)
        .map(|n| {
            n.trim()
                .chars()
                .take(MAX_OPERATOR_CHARS)
                .collect::<String>()
        })
        .filter(|n| !n.is_empty());
    let operators = broker_user
        .as_deref()
        .is_some_and(|u| users.may_publish_as(u, users.operator));
    let (operator, claimed) = if operators {
        (named, None)
    } else {
        (None, named)
    };
    HandSender {
        broker_user,
        operator,
        claimed,
    }
}

/// Ok when `event_type` in a message with `props` comes from its producer's broker user;
/// else why not (the dead-letter reason).
pub(crate) fn check<K: EventKind>(
    users: &ProducerUsers,
    event_type: K,
    props: &BasicProperties,
    own_user: &str,
) -> Result<(), String> {
    let producer = event_type.producer();
    match publisher_of(users, props, own_user) {
        Some(user) if users.may_publish_as(&user, producer) => Ok(()),
        Some(user) => Err(format!(
            "{} is published only by {producer} (broker users {:?}); this one came from broker user {user:?}",
            event_type.name(),
            users.users_of(producer)
        )),
        None => Err(format!(
            "{} carries no user_id, so its producer cannot be told",
            event_type.name()
        )),
    }
}

/// `headers` with [`PUBLISHED_BY_HEADER`] set to who published `props` (for a copy about to
/// be republished by `own_user`). A header already there is kept only when it is trusted.
pub(crate) fn record_publisher(
    users: &ProducerUsers,
    props: &BasicProperties,
    own_user: &str,
    headers: &mut FieldTable,
) {
    if let Some(user) = publisher_of(users, props, own_user) {
        headers.insert(
            PUBLISHED_BY_HEADER.into(),
            AMQPValue::LongString(LongString::from(user.as_bytes())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_catalog::Kind;

    fn users() -> ProducerUsers {
        let mut by_producer = HashMap::new();
        for (p, u) in [
            ("pinger", "pinger-u"),
            ("ponger", "ponger-u"),
            ("operator", "operator-u"),
        ] {
            by_producer.insert(p.to_owned(), vec![u.to_owned()]);
        }
        ProducerUsers {
            by_producer,
            operator: "operator",
        }
    }

    fn props(user: &str, published_by: Option<&str>) -> BasicProperties {
        with_headers(user, &[(PUBLISHED_BY_HEADER, published_by)])
    }

    fn with_headers(user: &str, headers: &[(&str, Option<&str>)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, value) in headers {
            if let Some(v) = value {
                table.insert(
                    (*name).into(),
                    AMQPValue::LongString(LongString::from(v.as_bytes())),
                );
            }
        }
        BasicProperties::default()
            .with_user_id(user.into())
            .with_headers(table)
    }

    #[test]
    fn the_operators_name_is_believed_only_from_an_operators_broker_user() {
        let u = users();
        let own = "consumer-u";
        let named = |user: &str, relayed: Option<&str>| {
            let p = with_headers(
                user,
                &[
                    (OPERATOR_HEADER, Some(" alice ")),
                    (PUBLISHED_BY_HEADER, relayed),
                ],
            );
            hand_sender(&u, &p, own)
        };
        let by_operator = named("operator-u", None);
        assert_eq!(by_operator.operator.as_deref(), Some("alice"));
        assert_eq!(by_operator.broker_user.as_deref(), Some("operator-u"));
        assert_eq!(
            (by_operator.actor(), by_operator.claimed),
            ("alice".to_owned(), None)
        );
        // The consumer's own retry copy of the operator's message keeps the name.
        assert_eq!(named(own, Some("operator-u")).actor(), "alice");
        // Anyone else, relaying or not: the broker user acts, the name is only a claim.
        for forged in [
            named("pinger-u", None),
            named("pinger-u", Some("operator-u")),
        ] {
            assert_eq!(forged.actor(), "pinger-u");
            assert_eq!(forged.claimed.as_deref(), Some("alice"));
        }
        // No name: the broker user acts.
        let unnamed = hand_sender(&u, &props("operator-u", None), own);
        assert_eq!(
            (unnamed.actor(), unnamed.claimed),
            ("operator-u".to_owned(), None)
        );
    }

    #[test]
    fn an_event_from_its_producer_is_accepted_and_from_another_refused() {
        let u = users();
        let own = "consumer-u";
        assert!(check(&u, Kind::Ping, &props("pinger-u", None), own).is_ok());
        assert!(check(&u, Kind::Ping, &props("ponger-u", None), own).is_err());
        assert!(check(&u, Kind::Pong, &props("pinger-u", None), own).is_err());
        assert!(check(&u, Kind::Pong, &props("ponger-u", None), own).is_ok());
    }

    #[test]
    fn the_published_by_header_is_believed_only_from_the_consumer_itself_or_an_operator() {
        let u = users();
        // The consumer's own retry copy, and an operator's replay.
        let own_retry = props("consumer-u", Some("pinger-u"));
        assert!(check(&u, Kind::Ping, &own_retry, "consumer-u").is_ok());
        let replay = props("operator-u", Some("ponger-u"));
        assert!(check(&u, Kind::Pong, &replay, "consumer-u").is_ok());
        // Another producer claiming to relay someone else's message.
        let injected = props("ponger-u", Some("pinger-u"));
        assert!(check(&u, Kind::Ping, &injected, "consumer-u").is_err());
    }

    #[test]
    fn every_producer_of_the_catalog_gets_users() {
        let u = ProducerUsers::from_env::<Kind>();
        assert!(!u.users_of("pinger").is_empty());
        assert!(!u.users_of("ponger").is_empty());
        assert!(u.users_of("nobody").is_empty());
    }

    #[test]
    fn a_url_names_its_user() {
        assert_eq!(
            user_of_url("amqp://order-svc:pw@rabbit:5672/saga"),
            "order-svc"
        );
        assert_eq!(user_of_url("amqp://127.0.0.1:5672/saga"), "guest");
    }
}
