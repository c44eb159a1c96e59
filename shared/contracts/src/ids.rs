//! Typed identifiers. Every id minted by pvefleet is a UUIDv7, so ids sort by creation time.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Mints a new, time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// The AMQP `message_id` of one message. Kept across retries and replays.
    MessageId
);
uuid_id!(
    /// The AMQP `correlation_id`: the saga or operation a message belongs to.
    CorrelationId
);
uuid_id!(
    /// A site (one WordPress site or bare container requested by an owner).
    SiteId
);
/// The line that opens the marker a site's container carries in its PVE description.
pub const SITE_MARKER_PREFIX: &str = "pvefleet-site: ";

impl SiteId {
    /// The line a site's container carries in its PVE description (`pvefleet-site: <id>`):
    /// how the provisioner knows a container is this site's before it destroys it.
    pub fn marker(&self) -> String {
        format!("{SITE_MARKER_PREFIX}{self}")
    }
}

uuid_id!(
    /// A saga instance driven by the coordinator.
    SagaId
);
uuid_id!(
    /// A tracked operation (for example a network hotplug).
    OperationId
);

impl From<SagaId> for CorrelationId {
    fn from(s: SagaId) -> Self {
        Self(s.0)
    }
}

/// A Proxmox guest id. PVE allows 100 to 999999999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Vmid(#[schemars(range(min = 100, max = 999_999_999))] pub u32);

impl fmt::Display for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v7_and_round_trip_through_text() {
        let id = MessageId::new();
        assert_eq!(id.0.get_version_num(), 7);
        let back: MessageId = id.to_string().parse().unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn ids_serialize_as_plain_strings() {
        let id = SiteId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
    }
}
