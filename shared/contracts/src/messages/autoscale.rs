//! The autoscaler's messages: a container scaled, a resource alert, and setting a policy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::Vmid;
use crate::message::{Event, Kind, Message};

/// The autoscaler changed a container's cores or memory (or, in a dry run, would have).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContainerScaled {
    /// The container.
    pub vmid: Vmid,
    /// The node it runs on.
    pub node: String,
    /// `cpu` (cores) or `memory` (MiB).
    pub resource: String,
    /// The value before.
    pub from: u64,
    /// The value after.
    pub to: u64,
    /// `scaled`, or `would_scale` in a dry run.
    pub outcome: String,
    /// An emergency scale-up that bypassed the cooldown.
    #[serde(default)]
    pub emergency: bool,
}
event!(
    ContainerScaled,
    "container.scaled",
    "The autoscaler changed a container's cores or memory.",
    ContainerScaled {
        vmid: Vmid(123),
        node: "pve1".into(),
        resource: "memory".into(),
        from: 2048,
        to: 2560,
        outcome: "scaled".into(),
        emergency: false,
    }
);

/// A container or node crossed a resource threshold (`raised`), or went back below it
/// (`cleared`); once per crossing, never every tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceAlert {
    /// `lxc/101` or `node/pve1`.
    pub subject: String,
    /// `cpu`, `memory`, `disk`, or `restart_loop` (the watchdog gave up restarting it).
    pub kind: String,
    /// `raised` or `cleared`.
    pub state: String,
    /// The usage, %, when it changed.
    pub value: f64,
    /// The threshold, %.
    pub threshold: f64,
    /// The node: the container's, or the node itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}
event!(
    ResourceAlert,
    "resource.alert",
    "A container or node crossed a resource threshold, or went back below it.",
    ResourceAlert {
        subject: "lxc/123".into(),
        kind: "memory".into(),
        state: "raised".into(),
        value: 91.5,
        threshold: 85.0,
        node: Some("pve1".into()),
    }
);

/// Set (or, with no policy, delete) an autoscaling policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AutoscalePolicySet {
    /// `global`, `tag:<tag>` or `vmid:<n>`.
    #[schemars(regex(pattern = r"^(global|tag:[A-Za-z0-9_.-]{1,64}|vmid:[0-9]{1,9})$"))]
    pub scope: String,
    /// The keys to change over the default (`{"max_cores": 4}`); absent: delete the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Map<String, serde_json::Value>>,
}
impl_message!(
    AutoscalePolicySet,
    "autoscale.policy.set",
    Command,
    "Set or delete an autoscaling policy.",
    AutoscalePolicySet {
        scope: "tag:web".into(),
        policy: Some(serde_json::Map::from_iter([(
            "max_cores".to_string(),
            serde_json::json!(4)
        )])),
    }
);
