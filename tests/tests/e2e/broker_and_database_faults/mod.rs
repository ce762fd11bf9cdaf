//! The long suites in which a broker node, the broker or a database fails under load
//! (two to two and a half minutes each). libtest starts tests in name order, so this
//! module's name puts them among the first to start: the short tests then fill the other
//! threads around them, instead of the long ones starting last and running alone.

mod cluster;
mod outages;
mod partition;
mod pg_auto_failover;
mod pg_failover;
mod replica_cut;
