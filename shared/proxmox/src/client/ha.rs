//! HA: resources, groups (PVE 8) and rules (PVE 9) (pve-behaviour.md §5.12). All writes are
//! synchronous and answer `null`.

use serde::Deserialize;
use serde_json::Value;

use super::{Params, PveClient, PveError, enc, lenient};

/// An HA resource.
#[derive(Debug, Clone, Deserialize)]
pub struct HaResource {
    /// `ct:100`.
    pub sid: String,
    /// `started`, `stopped`, `enabled`, `disabled` or `ignored`.
    #[serde(default)]
    pub state: Option<String>,
    /// The group (PVE 8).
    #[serde(default)]
    pub group: Option<String>,
    /// Restarts on the same node before relocating.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_restart: Option<u64>,
    /// Relocations before giving up.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_relocate: Option<u64>,
    /// Move back to the preferred node (PVE 9).
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub failback: Option<bool>,
    /// A comment.
    #[serde(default)]
    pub comment: Option<String>,
    /// The config digest, for guarded updates.
    #[serde(default)]
    pub digest: Option<String>,
}

/// What to make HA-managed, and how.
#[derive(Debug, Clone, Default)]
pub struct HaResourceSpec {
    /// `started` (the default), `stopped`, `disabled` or `ignored`.
    pub state: Option<String>,
    /// Restarts on the same node before relocating (PVE's default is 1).
    pub max_restart: Option<u32>,
    /// Relocations before giving up (PVE's default is 1).
    pub max_relocate: Option<u32>,
    /// A PVE 8 group; refused on PVE 9, where groups became rules.
    pub group: Option<String>,
    /// A comment.
    pub comment: Option<String>,
}

impl HaResourceSpec {
    fn params(&self) -> Params {
        Params::new()
            .opt("state", self.state.as_deref())
            .opt("max_restart", self.max_restart)
            .opt("max_relocate", self.max_relocate)
            .opt("group", self.group.as_deref())
            .opt("comment", self.comment.as_deref())
    }
}

/// An HA group (PVE 8).
#[derive(Debug, Clone, Deserialize)]
pub struct HaGroup {
    /// The id.
    pub group: String,
    /// `node[:prio],...`.
    #[serde(default)]
    pub nodes: Option<String>,
    /// Only these nodes.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub restricted: Option<bool>,
    /// Do not move back to a higher-priority node.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub nofailback: Option<bool>,
}

/// An HA rule (PVE 9).
#[derive(Debug, Clone, Deserialize)]
pub struct HaRule {
    /// The id.
    pub rule: String,
    /// `node-affinity` or `resource-affinity`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `ct:100,ct:101`.
    #[serde(default)]
    pub resources: Option<String>,
    /// Node affinity: `node[:prio],...`.
    #[serde(default)]
    pub nodes: Option<String>,
    /// Node affinity: restrict to the nodes rather than prefer them.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub strict: Option<bool>,
    /// Resource affinity: `positive` or `negative`.
    #[serde(default)]
    pub affinity: Option<String>,
    /// Disabled.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub disable: Option<bool>,
    /// The config digest.
    #[serde(default)]
    pub digest: Option<String>,
}

/// A rule to create (PVE 9). Its resources must already be HA-managed.
#[derive(Debug, Clone)]
pub enum HaRuleSpec {
    /// Keep `resources` on `nodes` (`node[:prio]`); `strict` restricts rather than prefers.
    NodeAffinity {
        /// `ct:100`, ...
        resources: Vec<String>,
        /// `pve1:2`, `pve2`, ...
        nodes: Vec<String>,
        /// Restrict to the nodes.
        strict: bool,
    },
    /// Keep `resources` together (`positive`) or apart (`negative`).
    ResourceAffinity {
        /// `ct:100`, ...
        resources: Vec<String>,
        /// Together or apart.
        together: bool,
    },
}

/// One entry of `GET /cluster/ha/status/current`.
#[derive(Debug, Clone, Deserialize)]
pub struct HaStatus {
    /// `quorum`, `master`, `lrm`, `service`, `fencing`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Services: the sid.
    #[serde(default)]
    pub sid: Option<String>,
    /// Services: the node it runs on.
    #[serde(default)]
    pub node: Option<String>,
    /// The state.
    #[serde(default)]
    pub state: Option<String>,
}

impl PveClient {
    /// `GET /cluster/ha/resources`.
    pub async fn ha_resources(&self) -> Result<Vec<HaResource>, PveError> {
        self.get("/cluster/ha/resources", Params::new()).await
    }

    /// `GET /cluster/ha/resources/{sid}`.
    pub async fn ha_resource(&self, sid: &str) -> Result<HaResource, PveError> {
        self.get(&format!("/cluster/ha/resources/{}", enc(sid)), Params::new())
            .await
    }

    /// `POST /cluster/ha/resources`: makes `sid` (`ct:100`) HA-managed.
    pub async fn ha_resource_add(&self, sid: &str, spec: &HaResourceSpec) -> Result<(), PveError> {
        let _: Value = self
            .post("/cluster/ha/resources", spec.params().set("sid", sid))
            .await?;
        Ok(())
    }

    /// `PUT /cluster/ha/resources/{sid}`, guarded by `digest` when given.
    pub async fn ha_resource_update(
        &self,
        sid: &str,
        spec: &HaResourceSpec,
        digest: Option<&str>,
    ) -> Result<(), PveError> {
        let _: Value = self
            .put(
                &format!("/cluster/ha/resources/{}", enc(sid)),
                spec.params().opt("digest", digest),
            )
            .await?;
        Ok(())
    }

    /// `DELETE /cluster/ha/resources/{sid}`. `purge` (PVE 9 only) also drops it from rules;
    /// leave it `None` on PVE 8.
    pub async fn ha_resource_delete(&self, sid: &str, purge: Option<bool>) -> Result<(), PveError> {
        let params = match purge {
            Some(p) => Params::new().flag("purge", p),
            None => Params::new(),
        };
        let _: Value = self
            .delete(&format!("/cluster/ha/resources/{}", enc(sid)), params)
            .await?;
        Ok(())
    }

    /// `POST /cluster/ha/resources/{sid}/migrate`: asks the HA manager to move it.
    pub async fn ha_migrate(&self, sid: &str, node: &str) -> Result<(), PveError> {
        let _: Value = self
            .post(
                &format!("/cluster/ha/resources/{}/migrate", enc(sid)),
                Params::new().set("node", node),
            )
            .await?;
        Ok(())
    }

    /// `GET /cluster/ha/groups` (PVE 8).
    pub async fn ha_groups(&self) -> Result<Vec<HaGroup>, PveError> {
        self.get("/cluster/ha/groups", Params::new()).await
    }

    /// `POST /cluster/ha/groups` (PVE 8).
    pub async fn ha_group_create(
        &self,
        group: &str,
        nodes: &[&str],
        restricted: bool,
        nofailback: bool,
    ) -> Result<(), PveError> {
        let _: Value = self
            .post(
                "/cluster/ha/groups",
                Params::new()
                    .set("group", group)
                    .set("nodes", nodes.join(","))
                    .flag("restricted", restricted)
                    .flag("nofailback", nofailback),
            )
            .await?;
        Ok(())
    }

    /// `DELETE /cluster/ha/groups/{group}` (PVE 8).
    pub async fn ha_group_delete(&self, group: &str) -> Result<(), PveError> {
        let _: Value = self
            .delete(&format!("/cluster/ha/groups/{}", enc(group)), Params::new())
            .await?;
        Ok(())
    }

    /// `GET /cluster/ha/rules` (PVE 9; PVE 8 answers 501).
    pub async fn ha_rules(&self) -> Result<Vec<HaRule>, PveError> {
        self.get("/cluster/ha/rules", Params::new()).await
    }

    /// `POST /cluster/ha/rules` (PVE 9).
    pub async fn ha_rule_create(&self, rule: &str, spec: &HaRuleSpec) -> Result<(), PveError> {
        let params = Params::new().set("rule", rule);
        let params = match spec {
            HaRuleSpec::NodeAffinity {
                resources,
                nodes,
                strict,
            } => params
                .set("type", "node-affinity")
                .set("resources", resources.join(","))
                .set("nodes", nodes.join(","))
                .flag("strict", *strict),
            HaRuleSpec::ResourceAffinity { resources, together } => params
                .set("type", "resource-affinity")
                .set("resources", resources.join(","))
                .set("affinity", if *together { "positive" } else { "negative" }),
        };
        let _: Value = self.post("/cluster/ha/rules", params).await?;
        Ok(())
    }

    /// `DELETE /cluster/ha/rules/{rule}` (PVE 9).
    pub async fn ha_rule_delete(&self, rule: &str) -> Result<(), PveError> {
        let _: Value = self
            .delete(&format!("/cluster/ha/rules/{}", enc(rule)), Params::new())
            .await?;
        Ok(())
    }

    /// `GET /cluster/ha/status/current`.
    pub async fn ha_status(&self) -> Result<Vec<HaStatus>, PveError> {
        self.get("/cluster/ha/status/current", Params::new()).await
    }
}
