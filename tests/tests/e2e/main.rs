//! The end-to-end suite: the real service binaries as separate processes against the
//! real broker and database (started by scripts/test.sh), one module per area. One binary
//! links the whole tree once; its tests run side by side, each on a stack of its own (its
//! own vhost, databases and ports). The suites that stop the shared servers live in
//! `tests/tests/chaos.rs`, a binary of their own that runs alone.

mod audit;
mod auth;
mod batches;
mod bench;
mod broker_and_database_faults;
mod checker;
mod compensations;
mod concurrency;
mod dead_letters;
mod draining;
mod explorer;
mod failure_classes;
mod failures;
mod foundation;
mod harness;
mod inbox;
mod load_shedding;
mod observability;
mod openapi;
mod outbox;
mod races;
mod replicas;
mod sagactl_cli;
mod security;
mod slow_broker;
mod slow_clients;
mod staged_batches;
mod status_columns;
mod tls;
mod triage;
mod upgrades;
mod versions;
