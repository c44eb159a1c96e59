//! Resizing a container's disk, and the config edit its task makes when it ends.

use serde_json::{Value, json};

use crate::state::{Ct, SimState, format_size, parse_size};
use crate::tasks::Effect;
use crate::{ApiError, param as get};

use super::digest;

impl SimState {
    pub(super) fn resize(&mut self, node: &str, vmid: u32, params: &[(String, String)]) -> Result<Value, ApiError> {
        self.require(&format!("/vms/{vmid}"), "VM.Config.Disk")?;
        self.unlocked(node, vmid)?;
        let disk = get(params, "disk").unwrap_or("rootfs").to_string();
        let size = get(params, "size").unwrap_or_default();
        let ct = self.ct(node, vmid)?;
        if let Some(d) = get(params, "digest")
            && d != digest(&ct.config)
        {
            return Err(ApiError::new(
                500,
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        let volume = ct
            .config
            .main()
            .get(&disk)
            .ok_or_else(|| ApiError::new(500, format!("unable to parse config for disk '{disk}'")))?;
        let current = volume
            .split(',')
            .find_map(|o| o.strip_prefix("size="))
            .and_then(parse_size)
            .unwrap_or(0);
        let (grow, amount) = match size.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, size),
        };
        // A bare number is in gigabytes for the resize call.
        let amount = if amount.ends_with(|c: char| c.is_ascii_digit()) {
            format!("{amount}G")
        } else {
            amount.to_string()
        };
        let bytes = parse_size(&amount)
            .ok_or_else(|| ApiError::params(vec![("size".into(), "value does not match the regex pattern".into())]))?;
        let new = if grow { current + bytes } else { bytes };
        if new < current {
            return Err(ApiError::new(500, "unable to shrink disk size"));
        }
        if new == current {
            return Err(ApiError::new(500, "disk is already at specified size"));
        }
        Ok(json!(self.start_task(
            node,
            "resize",
            &vmid.to_string(),
            Some(Effect::Resize(vmid, disk, new)),
            None
        )))
    }
}

/// Sets the `size` of a disk's volume.
pub(crate) fn set_disk_size(ct: &mut Ct, disk: &str, bytes: u64) {
    let main = ct.config.main_mut();
    let Some(volume) = main.get(disk) else { return };
    let mut parts: Vec<String> = volume
        .split(',')
        .filter(|p| !p.starts_with("size="))
        .map(str::to_string)
        .collect();
    parts.push(format!("size={}", format_size(bytes)));
    main.set(disk, &parts.join(","));
}
