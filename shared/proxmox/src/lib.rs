//! Proxmox VE for pvefleet: the API client (`client`) and the lossless LXC config codec
//! (`codec`), which reads and writes PVE container config files and the `net[n]`, `rootfs`,
//! `mp[n]` and `features` property strings.

pub mod client;
pub mod codec;

pub use codec::config::{ConfigFile, Entry, Line, Section, SectionKind};
pub use codec::error::CodecError;
