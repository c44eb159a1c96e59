//! `ha.*`: making a container an HA resource and removing it again.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MaybeVmid, example_site};
use crate::ids::{SiteId, Vmid};
use crate::message::{Command, Event, Kind, Message, StepError};

/// Make a container an HA resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HaEnable {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
    /// PVE 8 group or PVE 9 node-affinity rule to place it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}
impl MaybeVmid for HaEnable {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    HaEnable,
    "ha.enable",
    "Add a container to HA with requested state started.",
    HaEnableFailed,
    HaEnable {
        site_id: example_site(),
        vmid: Vmid(123),
        group: None,
    }
);

/// The container is an HA resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HaEnabled {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
}
event!(
    HaEnabled,
    "ha.enabled",
    "A container became an HA resource.",
    HaEnabled {
        site_id: example_site(),
        vmid: Vmid(123)
    }
);
failed_event!(HaEnableFailed, "ha.enable_failed", "Adding a container to HA failed.");

/// Remove a container from HA; absence counts as success.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HaDisable {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
}
impl MaybeVmid for HaDisable {
    fn vmid_opt(&self) -> Option<Vmid> {
        Some(self.vmid)
    }
}
command!(
    HaDisable,
    "ha.disable",
    "Remove a container from HA (absence is success).",
    HaDisableFailed,
    HaDisable {
        site_id: example_site(),
        vmid: Vmid(123),
    }
);

/// The container is no longer an HA resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HaDisabled {
    /// The site.
    pub site_id: SiteId,
    /// The container.
    pub vmid: Vmid,
}
event!(
    HaDisabled,
    "ha.disabled",
    "A container was removed from HA.",
    HaDisabled {
        site_id: example_site(),
        vmid: Vmid(123)
    }
);
failed_event!(
    HaDisableFailed,
    "ha.disable_failed",
    "Removing a container from HA failed."
);
