//! The autoscaler (issue 7, in progress): the scaling decision and the sample windows it
//! averages over, both pure and unit-tested. The service around them (one
//! `/cluster/resources` read per tick, policies in Postgres, the digest-guarded config write,
//! alerts, the watchdog, the CLI) is still to come.

pub mod decide;
pub mod window;
