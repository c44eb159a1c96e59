//! The shared messaging runtime against the real RabbitMQ and Postgres: retries through wait
//! tiers, parking, crash recovery, the outbox and the inbox, topology, timeouts.
//!
//! Tests in the `broker` module stop or block the whole broker; `scripts/test` runs them on
//! their own, one at a time, after everything else (nextest filter `test(/^broker::/)`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod broker;
mod ops;
mod outbox;
mod parking;
mod processes;
mod publishing;
mod topology;
mod worker;
