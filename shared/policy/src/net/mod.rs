//! Network interface requests: `spec` checks one against itself and builds its `netN` value,
//! `check` checks it against PVE (only reads), `pool` leases addresses, `ops` records
//! operations, `view` reconciles PVE's configs with the fleet's records.

pub mod check;
pub mod ops;
pub mod pool;
pub mod spec;
pub mod view;
