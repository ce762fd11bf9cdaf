//! The saga's routing table: which service consumes which event types, assembled from the
//! three services' own topologies (each built from the event types its handler consumes).
//! Nothing else lists the subscriptions: the AsyncAPI document, the docs' catalog table,
//! `sagactl tail`'s pre-declaration of the consumers' queues and the tests all read them
//! from here.

use events::EventType;
use messaging::topology::ServiceTopology;

/// Every saga service's topology, in the order order-svc, inventory-svc, payment-svc.
pub fn saga_services() -> Vec<ServiceTopology<EventType>> {
    vec![
        order_svc::topology(),
        inventory_svc::topology(),
        payment_svc::topology(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_of_the_catalog_has_a_consumer() {
        let services = saga_services();
        for t in EventType::ALL {
            assert!(
                services.iter().any(|s| s.consumes.contains(&t)),
                "{t} would be unroutable"
            );
        }
    }
}
