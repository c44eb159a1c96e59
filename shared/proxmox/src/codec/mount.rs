//! `rootfs` and `mp[n]`: volumes and mount points (pve-behaviour.md §6.2–6.3).

use serde::Serialize;

use super::config::Section;
use super::error::CodecError;
use super::{propstring, validate};

/// The most mount points a container can have (`mp0` to `mp255`).
pub const MAX_MOUNT_POINTS: u16 = 256;

const MOUNT_OPTIONS: [&str; 6] = ["discard", "lazytime", "noatime", "nodev", "noexec", "nosuid"];

/// A `rootfs` or `mp[n]` value.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MountPoint {
    /// The volume (`local-lvm:vm-101-disk-0`), or `STORAGE:SIZE_GiB` to allocate one.
    pub volume: String,
    /// Path inside the container (required for `mp[n]`, absent for `rootfs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mp: Option<String>,
    /// POSIX ACLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<bool>,
    /// Include in backups (mp only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<bool>,
    /// Keep attributes (PVE 9, mp only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepattrs: Option<bool>,
    /// Mount options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mountoptions: Option<Vec<String>>,
    /// User quotas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<bool>,
    /// Include in replication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicate: Option<bool>,
    /// Read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ro: Option<bool>,
    /// Shared between nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    /// Size, such as `8G` (read-only; change it with resize).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

impl MountPoint {
    /// Parses a `rootfs` value.
    pub fn parse_rootfs(key: &str, value: &str) -> Result<Self, CodecError> {
        let m = Self::parse_any(key, value, false)?;
        Ok(m)
    }

    /// Parses an `mp[n]` value (`mp=` is required).
    pub fn parse_mp(key: &str, value: &str) -> Result<Self, CodecError> {
        let m = Self::parse_any(key, value, true)?;
        if m.mp.is_none() {
            return Err(CodecError::Missing {
                key: key.to_string(),
                option: "mp".into(),
            });
        }
        Ok(m)
    }

    fn parse_any(key: &str, value: &str, is_mp: bool) -> Result<Self, CodecError> {
        let mut m = Self::default();
        for (opt, v) in propstring::parse(key, value, Some("volume"))? {
            let flag = |v: &str| validate::boolean(key, &opt, v).map(Some);
            match opt.as_str() {
                "volume" => {
                    if v.is_empty() {
                        return Err(CodecError::option(key, &opt, "empty volume"));
                    }
                    m.volume = v;
                }
                "mp" if is_mp => {
                    if !v.starts_with('/') {
                        return Err(CodecError::option(key, &opt, format!("'{v}' is not an absolute path")));
                    }
                    m.mp = Some(v);
                }
                "acl" => m.acl = flag(&v)?,
                "backup" if is_mp => m.backup = flag(&v)?,
                "keepattrs" if is_mp => m.keepattrs = flag(&v)?,
                "quota" => m.quota = flag(&v)?,
                "replicate" => m.replicate = flag(&v)?,
                "ro" => m.ro = flag(&v)?,
                "shared" => m.shared = flag(&v)?,
                "size" => {
                    validate::disk_size(key, &opt, &v)?;
                    m.size = Some(v);
                }
                "mountoptions" => {
                    let opts: Vec<String> = v.split(';').map(str::to_string).collect();
                    if let Some(bad) = opts.iter().find(|o| !MOUNT_OPTIONS.contains(&o.as_str())) {
                        return Err(CodecError::option(
                            key,
                            &opt,
                            format!("'{bad}' is not one of {}", MOUNT_OPTIONS.join(", ")),
                        ));
                    }
                    m.mountoptions = Some(opts);
                }
                other => return Err(CodecError::option(key, other, "unknown option")),
            }
        }
        if m.volume.is_empty() {
            return Err(CodecError::Missing {
                key: key.to_string(),
                option: "volume".into(),
            });
        }
        Ok(m)
    }

    /// The property string, the volume first, the rest sorted as PVE writes them.
    pub fn to_property_string(&self, key: &str) -> Result<String, CodecError> {
        let mut items: Vec<(&str, String)> = vec![("volume", self.volume.clone())];
        if let Some(p) = &self.mp {
            items.push(("mp", p.clone()));
        }
        if let Some(s) = &self.size {
            items.push(("size", s.clone()));
        }
        if let Some(o) = &self.mountoptions {
            items.push(("mountoptions", o.join(";")));
        }
        for (k, v) in [
            ("acl", self.acl),
            ("backup", self.backup),
            ("keepattrs", self.keepattrs),
            ("quota", self.quota),
            ("replicate", self.replicate),
            ("ro", self.ro),
            ("shared", self.shared),
        ] {
            if let Some(b) = v {
                items.push((k, if b { "1".into() } else { "0".into() }));
            }
        }
        propstring::write(key, items, Some("volume"))
    }
}

impl Section {
    /// The parsed `rootfs`, if set.
    pub fn rootfs(&self) -> Option<Result<MountPoint, CodecError>> {
        self.get("rootfs").map(|v| MountPoint::parse_rootfs("rootfs", v))
    }

    /// Every `mp[n]`, by index.
    pub fn mount_points(&self) -> Vec<(u16, Result<MountPoint, CodecError>)> {
        self.entries()
            .filter_map(|e| {
                let idx: u16 = e.key.strip_prefix("mp")?.parse().ok()?;
                (idx < MAX_MOUNT_POINTS).then(|| (idx, MountPoint::parse_mp(&e.key, &e.value)))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_and_mount_points_parse_and_write_back() {
        let r = MountPoint::parse_rootfs("rootfs", "local-lvm:vm-101-disk-0,size=8G").unwrap();
        assert_eq!(r.volume, "local-lvm:vm-101-disk-0");
        assert_eq!(r.size.as_deref(), Some("8G"));
        assert_eq!(
            r.to_property_string("rootfs").unwrap(),
            "local-lvm:vm-101-disk-0,size=8G"
        );
        let text = "local:vm-1-disk-1,acl=1,backup=0,mountoptions=noatime;nodev,mp=/srv/data,ro=1,size=32G";
        let m = MountPoint::parse_mp("mp0", text).unwrap();
        assert_eq!(m.mp.as_deref(), Some("/srv/data"));
        assert_eq!(m.mountoptions, Some(vec!["noatime".into(), "nodev".into()]));
        assert_eq!(m.to_property_string("mp0").unwrap(), text);
        assert_eq!(
            MountPoint::parse_rootfs("rootfs", "volume=local:8").unwrap().volume,
            "local:8"
        );
    }

    #[test]
    fn invalid_mount_points_name_the_key_and_option() {
        for (key, text, option) in [
            ("mp1", "local:vm-1-disk-1", "mp"),
            ("mp1", "local:vm-1-disk-1,mp=relative/path", "mp"),
            ("mp1", "local:x,mp=/a,mountoptions=noatime;suid", "mountoptions"),
            ("rootfs", "local:x,size=huge", "size"),
            ("rootfs", "local:x,mp=/a", "mp"),
            ("rootfs", "size=8G", "volume"),
            ("rootfs", "local:x,ro=2", "ro"),
        ] {
            let parsed = if key == "rootfs" {
                MountPoint::parse_rootfs(key, text)
            } else {
                MountPoint::parse_mp(key, text)
            };
            let msg = parsed.unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("{key}: ")) && msg.contains(&format!("'{option}'")),
                "{text}: {msg}"
            );
        }
    }
}
