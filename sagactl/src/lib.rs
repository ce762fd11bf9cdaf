//! The parts of sagactl other programs use too (the test suites run the same invariant
//! checks as `sagactl verify`).
//!
//! - [`scenario`]: the scenario file format and its pure helpers.
//! - [`verify`]: reads the three services' HTTP read endpoints and checks the contract's
//!   at-rest invariants.
//! - [`subscriptions`]: which service consumes which event types, from the services' own
//!   topologies.

pub mod scenario;
pub mod subscriptions;
pub mod verify;
