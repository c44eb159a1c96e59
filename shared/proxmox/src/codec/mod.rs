//! The LXC config codec: the file format (`config`), property strings (`propstring`) and the
//! typed values PVE stores in them (`net`, `mount`, `features`).

pub mod config;
pub mod error;
pub mod features;
pub mod mount;
pub mod net;
pub mod propstring;
pub mod prune;
mod validate;
