//! The saga kinds: each a table and its hooks.

pub mod deprovision;
pub mod provision;
pub mod restore;
pub mod site;
pub mod vnet;
