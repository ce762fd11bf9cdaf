//! The three services as the property tests' broker knows them: their names and what
//! each one's queue is bound to, read from the service's own `topology()`.

use std::sync::OnceLock;

use events::EventType;

/// A saga service: its queue, its inbox, its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Service {
    Order,
    Inventory,
    Payment,
}

impl Service {
    pub(crate) const ALL: [Service; 3] = [Service::Order, Service::Inventory, Service::Payment];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Service::Order => order_svc::SERVICE,
            Service::Inventory => inventory_svc::SERVICE,
            Service::Payment => payment_svc::SERVICE,
        }
    }

    /// What the service's queue is bound to: the service's own topology.
    pub(crate) fn consumes(self) -> &'static [EventType] {
        static ROUTES: OnceLock<[Vec<EventType>; 3]> = OnceLock::new();
        let routes = ROUTES.get_or_init(|| {
            [
                order_svc::topology().consumes,
                inventory_svc::topology().consumes,
                payment_svc::topology().consumes,
            ]
        });
        &routes[self as usize]
    }
}
