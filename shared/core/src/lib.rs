//! The runtime every pvefleet service shares: config, telemetry, shutdown, the bus (lapin) and
//! the state store (Postgres pool, migrations, inbox, outbox).

pub mod audit;
pub mod bus;
pub mod config;
pub mod db;
pub mod dlq;
pub mod http;
pub mod instrument;
pub mod periodic;
#[cfg(feature = "pve")]
pub mod pve;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod site_secrets;
pub mod telemetry;

pub use config::Settings;
pub use secret::Secret;
