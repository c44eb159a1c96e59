//! `dns.*` and `proxy.*`: a site's DNS record and its reverse-proxy route.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MaybeVmid, example_site};
use crate::ids::{SiteId, Vmid};
use crate::message::{Command, Event, Kind, Message, StepError};

/// A DNS record type pvefleet manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    AAAA,
    /// Alias.
    CNAME,
}

/// Create or replace a DNS record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DnsUpsert {
    /// The site.
    pub site_id: SiteId,
    /// The fully qualified name, without trailing dot.
    pub fqdn: String,
    /// Record type.
    pub record_type: RecordType,
    /// Record content, such as an address.
    pub content: String,
    /// TTL in seconds; the provider default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}
impl MaybeVmid for DnsUpsert {
    fn vmid_opt(&self) -> Option<Vmid> {
        None
    }
}
command!(
    DnsUpsert,
    "dns.upsert",
    "Create or replace a DNS record.",
    DnsUpsertFailed,
    DnsUpsert {
        site_id: example_site(),
        fqdn: "blog.example.org".into(),
        record_type: RecordType::A,
        content: "203.0.113.10".into(),
        ttl: Some(300),
    }
);

/// The DNS record is in place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DnsUpserted {
    /// The site.
    pub site_id: SiteId,
    /// The name.
    pub fqdn: String,
}
event!(
    DnsUpserted,
    "dns.upserted",
    "A DNS record was created or replaced.",
    DnsUpserted {
        site_id: example_site(),
        fqdn: "blog.example.org".into(),
    }
);
failed_event!(DnsUpsertFailed, "dns.upsert_failed", "Writing a DNS record failed.");

/// Delete a DNS record; absence counts as success.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DnsDelete {
    /// The site.
    pub site_id: SiteId,
    /// The name.
    pub fqdn: String,
    /// Record type.
    pub record_type: RecordType,
}
impl MaybeVmid for DnsDelete {
    fn vmid_opt(&self) -> Option<Vmid> {
        None
    }
}
command!(
    DnsDelete,
    "dns.delete",
    "Delete a DNS record (absence is success).",
    DnsDeleteFailed,
    DnsDelete {
        site_id: example_site(),
        fqdn: "blog.example.org".into(),
        record_type: RecordType::A,
    }
);

/// The DNS record is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DnsDeleted {
    /// The site.
    pub site_id: SiteId,
    /// The name.
    pub fqdn: String,
}
event!(
    DnsDeleted,
    "dns.deleted",
    "A DNS record was deleted.",
    DnsDeleted {
        site_id: example_site(),
        fqdn: "blog.example.org".into(),
    }
);
failed_event!(DnsDeleteFailed, "dns.delete_failed", "Deleting a DNS record failed.");

// ---------------------------------------------------------------------------------------------
// proxy.*

/// Create or replace a reverse-proxy route for a site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyUpsert {
    /// The site.
    pub site_id: SiteId,
    /// The host name the proxy matches.
    pub host: String,
    /// The upstream, `ip:port`.
    pub upstream: String,
}
impl MaybeVmid for ProxyUpsert {
    fn vmid_opt(&self) -> Option<Vmid> {
        None
    }
}
command!(
    ProxyUpsert,
    "proxy.upsert",
    "Create or replace a reverse-proxy route.",
    ProxyUpsertFailed,
    ProxyUpsert {
        site_id: example_site(),
        host: "blog.example.org".into(),
        upstream: "10.10.0.23:80".into(),
    }
);

/// The route is in place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyUpserted {
    /// The site.
    pub site_id: SiteId,
    /// The host.
    pub host: String,
}
event!(
    ProxyUpserted,
    "proxy.upserted",
    "A reverse-proxy route was created or replaced.",
    ProxyUpserted {
        site_id: example_site(),
        host: "blog.example.org".into(),
    }
);
failed_event!(
    ProxyUpsertFailed,
    "proxy.upsert_failed",
    "Writing a reverse-proxy route failed."
);

/// Delete a site's reverse-proxy route; absence counts as success.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyDelete {
    /// The site.
    pub site_id: SiteId,
    /// The host.
    pub host: String,
}
impl MaybeVmid for ProxyDelete {
    fn vmid_opt(&self) -> Option<Vmid> {
        None
    }
}
command!(
    ProxyDelete,
    "proxy.delete",
    "Delete a reverse-proxy route (absence is success).",
    ProxyDeleteFailed,
    ProxyDelete {
        site_id: example_site(),
        host: "blog.example.org".into(),
    }
);

/// The route is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyDeleted {
    /// The site.
    pub site_id: SiteId,
    /// The host.
    pub host: String,
}
event!(
    ProxyDeleted,
    "proxy.deleted",
    "A reverse-proxy route was deleted.",
    ProxyDeleted {
        site_id: example_site(),
        host: "blog.example.org".into(),
    }
);
failed_event!(
    ProxyDeleteFailed,
    "proxy.delete_failed",
    "Deleting a reverse-proxy route failed."
);
