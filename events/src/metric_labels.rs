//! Metric label values from closed sets. A label value that came from outside the process
//! (an AMQP `type` property, say) would otherwise create a new time series per distinct
//! value, and any publisher could grow a service's memory without bound.

use std::str::FromStr;

use crate::catalog::EventType;

/// The label for a message's event type: a catalog name, or `other`.
pub fn event_type(kind: Option<&str>) -> &'static str {
    kind.and_then(|k| EventType::from_str(k).ok())
        .map_or("other", EventType::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_catalog_types_become_labels() {
        assert_eq!(event_type(Some("OrderCreated")), "OrderCreated");
        assert_eq!(event_type(Some("Made-Up-1")), "other");
        assert_eq!(event_type(None), "other");
    }
}
