//! UPIDs: `UPID:node:pid:pstart:starttime:type:id:user:`, the id of a PVE task.

use std::fmt;

/// A parsed UPID. Tasks are followed on the node the UPID names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upid {
    /// The node the task runs on.
    pub node: String,
    /// The task type, such as `vzcreate`.
    pub kind: String,
    /// The task's object id, such as the vmid.
    pub id: String,
    /// Who started it.
    pub user: String,
    /// When it started, seconds since the epoch (0 when unreadable).
    pub starttime: u64,
    raw: String,
}

impl Upid {
    /// Parses a UPID; `None` when the text is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("UPID:")?;
        let parts: Vec<&str> = rest.split(':').collect();
        if parts.len() < 8 || parts[0].is_empty() || parts[4].is_empty() {
            return None;
        }
        Some(Self {
            node: parts[0].into(),
            kind: parts[4].into(),
            id: parts[5].into(),
            user: parts[6].into(),
            starttime: u64::from_str_radix(parts[3], 16).unwrap_or(0),
            raw: text.into(),
        })
    }

    /// The UPID text.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn upids_name_their_node_type_and_object() {
        let u = Upid::parse("UPID:pve2:0000A1B2:0012C3D4:65F0A1B2:vzcreate:101:root@pam!fleet:").unwrap();
        assert_eq!(
            (u.node.as_str(), u.kind.as_str(), u.id.as_str()),
            ("pve2", "vzcreate", "101")
        );
        assert_eq!(u.user, "root@pam!fleet");
        assert_eq!(u.starttime, 0x65F0_A1B2);
        assert!(Upid::parse("not a upid").is_none());
        assert!(Upid::parse("UPID:pve2:1").is_none());
    }
}
