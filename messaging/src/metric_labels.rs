//! Metric label values from closed sets. A label value that came from outside the process
//! (an AMQP `type` property, say) would otherwise create a new time series per distinct
//! value, and any publisher could grow a service's memory without bound.

use crate::event::EventKind;

/// The label for a message's event type: a name of the catalog of `K`, or `other`.
pub(crate) fn event_type<K: EventKind>(kind: Option<&str>) -> &'static str {
    kind.and_then(K::from_name).map_or("other", K::name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_catalog::Kind;

    #[test]
    fn only_catalog_types_become_labels() {
        assert_eq!(event_type::<Kind>(Some("Ping")), "Ping");
        assert_eq!(event_type::<Kind>(Some("Made-Up-1")), "other");
        assert_eq!(event_type::<Kind>(None), "other");
    }
}
