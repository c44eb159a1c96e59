//! The registry of every message type: the one list that schema generation, the AsyncAPI
//! document, the CLI and the consumer runner's "unknown type" check all read.

use serde_json::Value;

use crate::StepError;
use crate::message::{Command, Kind, Message};
use crate::messages::*;

/// What the runtime and tooling need to know about one message type.
#[derive(Clone, Copy, Debug)]
pub struct MessageInfo {
    /// The wire name, such as `container.create`.
    pub name: &'static str,
    /// The schema version.
    pub version: u32,
    /// Command or event.
    pub kind: Kind,
    /// One sentence.
    pub description: &'static str,
    /// For a command, the type of its `*_failed` event.
    pub failed_event: Option<&'static str>,
    schema: fn() -> Value,
    example: fn() -> Value,
    round_trip: fn(&Value) -> Result<Value, serde_json::Error>,
    failure: Option<FailureBuilder>,
}

/// Builds a command's `*_failed` event from the command's body and the step's error.
type FailureBuilder = fn(&Value, StepError) -> Result<Value, serde_json::Error>;

impl MessageInfo {
    /// The JSON Schema of the body, generated from the Rust type.
    pub fn schema(&self) -> Value {
        (self.schema)()
    }

    /// The golden example body.
    pub fn example(&self) -> Value {
        (self.example)()
    }

    /// Decodes a body into the Rust type and encodes it again: the decoder's view of it.
    pub fn round_trip(&self, body: &Value) -> Result<Value, serde_json::Error> {
        (self.round_trip)(body)
    }

    /// For a command, the body of its `*_failed` event for the command `body` and `error`
    /// (what its worker emits when it fails the step); `None` for other messages.
    pub fn failure(&self, body: &Value, error: StepError) -> Option<Result<Value, serde_json::Error>> {
        self.failure.map(|f| f(body, error))
    }

    /// The schema file name under `proto/schemas/`: `<type>.v<N>.json`.
    pub fn schema_file(&self) -> String {
        format!("{}.v{}.json", self.name, self.version)
    }

    /// The exchange this type is published to.
    pub fn exchange(&self) -> &'static str {
        match self.kind {
            Kind::Command => crate::routing::COMMANDS_EXCHANGE,
            Kind::Event => crate::routing::EVENTS_EXCHANGE,
        }
    }
}

/// The JSON Schema of a message type, with a title and `$id` naming the type and version.
pub fn schema_of<M: Message>() -> Value {
    let mut schema = schemars::schema_for!(M).to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            Value::String(format!("urn:pvefleet:{}:v{}", M::TYPE, M::VERSION)),
        );
        obj.insert("title".into(), Value::String(M::TYPE.into()));
        obj.insert("description".into(), Value::String(M::DESCRIPTION.into()));
    }
    schema
}

fn example_of<M: Message>() -> Value {
    serde_json::to_value(M::example()).unwrap_or(Value::Null)
}

fn round_trip_of<M: Message>(v: &Value) -> Result<Value, serde_json::Error> {
    let m: M = serde_json::from_value(v.clone())?;
    serde_json::to_value(m)
}

fn failure_of<M: Command>(body: &Value, error: StepError) -> Result<Value, serde_json::Error> {
    let cmd: M = serde_json::from_value(body.clone())?;
    serde_json::to_value(cmd.failed(error))
}

const fn event<M: Message>() -> MessageInfo {
    MessageInfo {
        name: M::TYPE,
        version: M::VERSION,
        kind: M::KIND,
        description: M::DESCRIPTION,
        failed_event: None,
        schema: schema_of::<M>,
        example: example_of::<M>,
        round_trip: round_trip_of::<M>,
        failure: None,
    }
}

/// The registry entry a message type would have (also for types outside the registry).
pub fn info_of<M: Message>() -> MessageInfo {
    event::<M>()
}

const fn command<M: Command>() -> MessageInfo {
    MessageInfo {
        failed_event: Some(<M::Failed as Message>::TYPE),
        failure: Some(failure_of::<M>),
        ..event::<M>()
    }
}

const fn plain_command<M: Message>() -> MessageInfo {
    event::<M>()
}

/// Every message type, in a stable order.
pub fn registry() -> &'static [MessageInfo] {
    static REGISTRY: [MessageInfo; 78] = [
        plain_command::<SiteProvision>(),
        plain_command::<SiteDeprovision>(),
        event::<SiteProvisioned>(),
        event::<SiteProvisionFailed>(),
        event::<SiteDeprovisioned>(),
        event::<SiteRejected>(),
        command::<ContainerCreate>(),
        event::<ContainerCreated>(),
        event::<ContainerCreateFailed>(),
        command::<ContainerStart>(),
        event::<ContainerStarted>(),
        event::<ContainerStartFailed>(),
        command::<ContainerSnapshot>(),
        event::<ContainerSnapshotted>(),
        event::<ContainerSnapshotFailed>(),
        command::<ContainerDestroy>(),
        event::<ContainerDestroyed>(),
        event::<ContainerDestroyFailed>(),
        command::<AppInstall>(),
        event::<AppInstalled>(),
        event::<AppInstallFailed>(),
        command::<DnsUpsert>(),
        event::<DnsUpserted>(),
        event::<DnsUpsertFailed>(),
        command::<DnsDelete>(),
        event::<DnsDeleted>(),
        event::<DnsDeleteFailed>(),
        command::<ProxyUpsert>(),
        event::<ProxyUpserted>(),
        event::<ProxyUpsertFailed>(),
        command::<ProxyDelete>(),
        event::<ProxyDeleted>(),
        event::<ProxyDeleteFailed>(),
        command::<HaEnable>(),
        event::<HaEnabled>(),
        event::<HaEnableFailed>(),
        command::<HaDisable>(),
        event::<HaDisabled>(),
        event::<HaDisableFailed>(),
        event::<MessageParked>(),
        event::<ContainerScaled>(),
        event::<ResourceAlert>(),
        event::<SagaSuspended>(),
        event::<SagaCompensationFailed>(),
        plain_command::<NotifyDeliver>(),
        plain_command::<AutoscalePolicySet>(),
        command::<BackupCreate>(),
        event::<BackupCreated>(),
        event::<BackupCreateFailed>(),
        command::<BackupRestore>(),
        event::<BackupRestored>(),
        event::<BackupRestoreFailed>(),
        event::<BackupVerified>(),
        command::<ConfigRestore>(),
        event::<ConfigRestored>(),
        event::<ConfigRestoreFailed>(),
        command::<AppCheck>(),
        event::<AppChecked>(),
        event::<AppCheckFailed>(),
        plain_command::<SiteRestore>(),
        event::<SiteRestored>(),
        event::<SiteRestoreFailed>(),
        command::<NetAttach>(),
        command::<NetUpdate>(),
        command::<NetDetach>(),
        command::<VnetBind>(),
        command::<VnetUnbind>(),
        command::<VnetEnsure>(),
        command::<VnetRemove>(),
        plain_command::<VnetProvision>(),
        event::<NetAttached>(),
        event::<NetUpdated>(),
        event::<NetDetached>(),
        event::<VnetBound>(),
        event::<VnetUnbound>(),
        event::<VnetEnsured>(),
        event::<VnetRemoved>(),
        event::<NetOperationFailed>(),
    ];
    &REGISTRY
}

/// Looks a message type up by wire name and version.
pub fn find(name: &str, version: u32) -> Option<&'static MessageInfo> {
    registry().iter().find(|m| m.name == name && m.version == version)
}

/// Looks up the newest version of a message type by wire name.
pub fn find_latest(name: &str) -> Option<&'static MessageInfo> {
    registry().iter().filter(|m| m.name == name).max_by_key(|m| m.version)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_command_builds_its_failure_event_from_its_body() {
        for m in registry().iter().filter(|m| m.failed_event.is_some()) {
            let failed = find_latest(m.failed_event.unwrap()).unwrap();
            let body = m
                .failure(&m.example(), StepError::new("test.code", "it failed"))
                .expect("a command with a failure event builds it")
                .unwrap();
            assert_eq!(failed.round_trip(&body).unwrap(), body, "{}", m.name);
            assert!(body.to_string().contains("it failed"), "{}: {body}", m.name);
        }
        assert!(
            find_latest("container.created")
                .unwrap()
                .failure(&Value::Null, StepError::new("a", "b"))
                .is_none()
        );
    }

    #[test]
    fn registry_names_and_versions_are_unique() {
        let mut seen = HashSet::new();
        for m in registry() {
            assert!(
                seen.insert((m.name, m.version)),
                "{} v{} registered twice",
                m.name,
                m.version
            );
        }
    }

    #[test]
    fn commands_are_imperative_and_events_are_past_tense() {
        for m in registry() {
            let verb = m.name.rsplit('.').next().unwrap_or_default();
            match m.kind {
                Kind::Command => assert!(!verb.ends_with("ed"), "{} looks like an event", m.name),
                // `resource.alert` is the name the monitoring guardrails give it; its `state`
                // says raised or cleared. `bound` and `unbound` are irregular.
                Kind::Event => assert!(
                    verb.ends_with("ed")
                        || verb.ends_with("_failed")
                        || verb.ends_with("bound")
                        || m.name == "resource.alert",
                    "{} is not past tense",
                    m.name
                ),
            }
        }
    }

    #[test]
    fn every_failed_event_named_by_a_command_is_registered() {
        for m in registry() {
            if let Some(f) = m.failed_event {
                assert!(find(f, 1).is_some(), "{} names unregistered {f}", m.name);
            }
        }
    }
}
