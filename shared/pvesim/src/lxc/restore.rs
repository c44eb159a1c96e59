//! Restoring a container from a backup: `POST /nodes/{node}/lxc` with `restore=1` and the
//! backup volume as `ostemplate` (pve-container `create_vm`). The archive's config comes
//! back, its disks allocated anew on `storage` (or where they were), parameters given with
//! the call override it, and `unique` gives each interface a new MAC address. Over an
//! existing container it needs `force`, and never overwrites a running one; if such a restore
//! fails, the old disks are already gone and the container is left locked (`create`), as on
//! PVE. A restore that makes a new container removes it when it fails.

use pvefleet_proxmox::ConfigFile;
use serde_json::{Value, json};

use crate::state::{Ct, SimState};
use crate::tasks::Effect;
use crate::{ApiError, param as get};

/// What a finished restore puts in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub vmid: u32,
    pub node: String,
    pub config: ConfigFile,
    pub start: bool,
    pub installed: bool,
}

/// Options of the restore call that are not config.
const CONTROL: &[&str] = &[
    "vmid",
    "ostemplate",
    "storage",
    "start",
    "force",
    "unique",
    "restore",
    "pool",
    "ignore-unpack-errors",
    "bwlimit",
    "password",
    "ssh-public-keys",
];

impl SimState {
    pub(super) fn restore(&mut self, node: &str, params: &[(String, String)]) -> Result<Value, ApiError> {
        let vmid: u32 = get(params, "vmid").and_then(|v| v.parse().ok()).unwrap_or(0);
        let volid = get(params, "ostemplate").unwrap_or_default().to_string();
        self.require(&format!("/vms/{vmid}"), "VM.Allocate")?;
        let force = get(params, "force") == Some("1");
        let existed = match self.containers.get(&vmid) {
            Some(ct) if ct.node != node || !force => {
                return Err(ApiError::new(
                    500,
                    format!("CT {vmid} already exists on node '{}'", ct.node),
                ));
            }
            Some(ct) if ct.running => {
                return Err(ApiError::new(
                    500,
                    format!("unable to restore CT {vmid} - can't overwrite running container"),
                ));
            }
            Some(ct) if ct.config.main().get("protection") == Some("1") => {
                return Err(ApiError::new(
                    500,
                    format!("unable to restore CT {vmid} - can't overwrite protected container"),
                ));
            }
            Some(_) => true,
            None => false,
        };
        let backup = self.backup_for(node, &volid)?.clone();
        let mut config = ConfigFile::parse(&backup.config).map_err(|e| ApiError::new(500, e.to_string()))?;
        let storage = get(params, "storage");
        {
            let main = config.main_mut();
            let disks: Vec<(String, String)> = main
                .entries()
                .filter(|e| e.key == "rootfs" || e.key.starts_with("mp"))
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            for (i, (key, value)) in disks.iter().enumerate() {
                let (volume, rest) = value.split_once(',').unwrap_or((value, ""));
                // A bind mount (a path) stays as it is; a volume is allocated anew.
                if volume.starts_with('/') {
                    continue;
                }
                let old_storage = volume.split(':').next().unwrap_or("local");
                let target = storage.unwrap_or(old_storage);
                let mut new = format!("{target}:vm-{vmid}-disk-{i}");
                if !rest.is_empty() {
                    new.push(',');
                    new.push_str(rest);
                }
                main.set(key, &new);
            }
            for (k, v) in params.iter().filter(|(k, _)| !CONTROL.contains(&k.as_str())) {
                main.set(k, v);
            }
            if get(params, "unique") == Some("1") {
                self.seq += 1;
                let nets: Vec<(String, String)> = main
                    .entries()
                    .filter(|e| e.key.starts_with("net"))
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect();
                for (n, (key, value)) in nets.iter().enumerate() {
                    let mac = format!(
                        "BC:24:11:{:02X}:{:02X}:{:02X}",
                        (vmid >> 8) & 0xff,
                        vmid & 0xff,
                        (self.seq as usize + n) & 0xff
                    );
                    let rewritten: Vec<String> = value
                        .split(',')
                        .map(|o| {
                            if o.starts_with("hwaddr=") {
                                format!("hwaddr={mac}")
                            } else {
                                o.to_string()
                            }
                        })
                        .collect();
                    main.set(key, &rewritten.join(","));
                }
            }
        }
        let failure = backup.corrupt.then(|| {
            format!("unable to restore CT {vmid} - command 'tar xpf - --zstd --totals --one-file-system -p --sparse --numeric-owner --acls --xattrs' failed: exit code 2 (zstd: /*stdin*\\: unknown header)")
        });
        match self.containers.get_mut(&vmid) {
            Some(ct) => ct.config.main_mut().set("lock", "create"),
            None => {
                let mut placeholder = config.clone();
                placeholder.main_mut().set("lock", "create");
                self.containers.insert(
                    vmid,
                    Ct {
                        node: node.into(),
                        config: placeholder,
                        running: false,
                        started: None,
                    },
                );
            }
        }
        let restored = Restored {
            vmid,
            node: node.to_string(),
            config,
            start: get(params, "start") == Some("1"),
            installed: backup.installed,
        };
        // A failed restore over an existing container leaves it locked; a new one goes.
        let on_error = (!existed).then_some(Effect::Remove(vmid, false));
        Ok(json!(self.start_task_failing(
            node,
            "vzrestore",
            &vmid.to_string(),
            Some(Effect::Restore(Box::new(restored))),
            on_error,
            failure,
        )))
    }
}

/// Puts a restored container in place.
pub(crate) fn finish_restore(s: &mut SimState, r: Restored) {
    let running = r.start;
    s.containers.insert(
        r.vmid,
        Ct {
            node: r.node,
            config: r.config,
            running,
            started: running.then(std::time::Instant::now),
        },
    );
    if r.installed {
        s.installed.insert(r.vmid);
    } else {
        s.installed.remove(&r.vmid);
    }
}
