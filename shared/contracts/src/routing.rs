//! Exchange, queue and routing names (DESIGN.md §3).

use std::time::Duration;

/// Direct exchange for commands; routing key = command type; published `mandatory`.
pub const COMMANDS_EXCHANGE: &str = "pvefleet.commands";
/// Topic exchange for events; routing key = event type.
pub const EVENTS_EXCHANGE: &str = "pvefleet.events";
/// Fanout exchange for parked messages (and the broker's dead-letter target).
pub const PARKED_EXCHANGE: &str = "pvefleet.parked";
/// Quorum queue holding parked messages until the keeper stores them.
pub const PARKED_QUEUE: &str = "pvefleet.parked";

/// The work queue of a service: `pvefleet.<service>`.
pub fn work_queue(service: &str) -> String {
    format!("pvefleet.{service}")
}

/// The work queue a command is routed to (commands bind by exact type), if any service's
/// queue takes it: `container.create` goes to `pvefleet.provisioner`.
pub fn command_queue(command: &str) -> Option<String> {
    fleet_bindings().into_iter().find_map(|(service, bindings)| {
        bindings
            .iter()
            .any(|(exchange, key)| *exchange == COMMANDS_EXCHANGE && *key == command)
            .then(|| work_queue(service))
    })
}

/// The wait-tier exchange and queue name for a delay: `pvefleet.wait.<delay>`, such as `pvefleet.wait.5s`.
pub fn wait_tier(delay: Duration) -> String {
    format!("pvefleet.wait.{}", tier_label(delay))
}

/// A compact label for a delay: `250ms`, `5s`, `2m`, `1h`.
pub fn tier_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Bindings an earlier release declared and this one does not: removed when the topology is
/// declared, so a broker carried over from that release routes as this one does. The saga
/// queue took every `backup.*` event; `backup.verified` is the notifier's alone.
pub fn retired_bindings() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![("saga", EVENTS_EXCHANGE, "backup.*")]
}

/// Which queue consumes which message types: the fleet's fixed plan.
///
/// Each entry is (service, [(exchange, routing key)]). Commands bind by exact type on the
/// direct exchange; events bind by pattern on the topic exchange.
pub fn fleet_bindings() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    use crate::message::Message;
    use crate::messages::*;
    vec![
        (
            "saga",
            vec![
                (COMMANDS_EXCHANGE, SiteProvision::TYPE),
                (COMMANDS_EXCHANGE, SiteDeprovision::TYPE),
                (COMMANDS_EXCHANGE, SiteRestore::TYPE),
                (EVENTS_EXCHANGE, "container.*"),
                (EVENTS_EXCHANGE, "app.*"),
                (EVENTS_EXCHANGE, "dns.*"),
                (EVENTS_EXCHANGE, "proxy.*"),
                (EVENTS_EXCHANGE, "ha.*"),
                (EVENTS_EXCHANGE, BackupCreated::TYPE),
                (EVENTS_EXCHANGE, BackupCreateFailed::TYPE),
                (EVENTS_EXCHANGE, BackupRestored::TYPE),
                (EVENTS_EXCHANGE, BackupRestoreFailed::TYPE),
                (EVENTS_EXCHANGE, "message.parked"),
                (COMMANDS_EXCHANGE, VnetProvision::TYPE),
                (EVENTS_EXCHANGE, VnetEnsured::TYPE),
                (EVENTS_EXCHANGE, VnetRemoved::TYPE),
                (EVENTS_EXCHANGE, VnetBound::TYPE),
                (EVENTS_EXCHANGE, NetOperationFailed::TYPE),
            ],
        ),
        (
            "provisioner",
            vec![
                (COMMANDS_EXCHANGE, ContainerCreate::TYPE),
                (COMMANDS_EXCHANGE, ContainerStart::TYPE),
                (COMMANDS_EXCHANGE, ContainerSnapshot::TYPE),
                (COMMANDS_EXCHANGE, ContainerDestroy::TYPE),
            ],
        ),
        (
            "installer",
            vec![
                (COMMANDS_EXCHANGE, AppInstall::TYPE),
                (COMMANDS_EXCHANGE, AppCheck::TYPE),
            ],
        ),
        (
            "nethotplug",
            vec![
                (COMMANDS_EXCHANGE, NetAttach::TYPE),
                (COMMANDS_EXCHANGE, NetUpdate::TYPE),
                (COMMANDS_EXCHANGE, NetDetach::TYPE),
                (COMMANDS_EXCHANGE, VnetBind::TYPE),
                (COMMANDS_EXCHANGE, VnetUnbind::TYPE),
                (COMMANDS_EXCHANGE, VnetEnsure::TYPE),
                (COMMANDS_EXCHANGE, VnetRemove::TYPE),
                (EVENTS_EXCHANGE, MessageParked::TYPE),
            ],
        ),
        ("autoscaler", vec![(COMMANDS_EXCHANGE, AutoscalePolicySet::TYPE)]),
        (
            "backup",
            vec![
                (COMMANDS_EXCHANGE, BackupCreate::TYPE),
                (COMMANDS_EXCHANGE, BackupRestore::TYPE),
                (COMMANDS_EXCHANGE, ConfigRestore::TYPE),
                // The configuration history: a version recorded after each change the fleet
                // makes to a container's config.
                (EVENTS_EXCHANGE, ContainerCreated::TYPE),
                (EVENTS_EXCHANGE, ContainerScaled::TYPE),
                (EVENTS_EXCHANGE, NetAttached::TYPE),
                (EVENTS_EXCHANGE, NetUpdated::TYPE),
                (EVENTS_EXCHANGE, NetDetached::TYPE),
                (EVENTS_EXCHANGE, VnetBound::TYPE),
                (EVENTS_EXCHANGE, VnetUnbound::TYPE),
                (EVENTS_EXCHANGE, BackupRestored::TYPE),
            ],
        ),
        (
            "notifier",
            vec![
                (EVENTS_EXCHANGE, SiteProvisioned::TYPE),
                (EVENTS_EXCHANGE, SiteProvisionFailed::TYPE),
                (EVENTS_EXCHANGE, SiteDeprovisioned::TYPE),
                (EVENTS_EXCHANGE, SagaSuspended::TYPE),
                (EVENTS_EXCHANGE, SagaCompensationFailed::TYPE),
                (EVENTS_EXCHANGE, MessageParked::TYPE),
                (EVENTS_EXCHANGE, ResourceAlert::TYPE),
                (EVENTS_EXCHANGE, BackupVerified::TYPE),
                (COMMANDS_EXCHANGE, NotifyDeliver::TYPE),
            ],
        ),
        (
            "edge",
            vec![
                (COMMANDS_EXCHANGE, DnsUpsert::TYPE),
                (COMMANDS_EXCHANGE, DnsDelete::TYPE),
                (COMMANDS_EXCHANGE, ProxyUpsert::TYPE),
                (COMMANDS_EXCHANGE, ProxyDelete::TYPE),
            ],
        ),
        (
            "ha",
            vec![
                (COMMANDS_EXCHANGE, HaEnable::TYPE),
                (COMMANDS_EXCHANGE, HaDisable::TYPE),
            ],
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    #[test]
    fn a_command_is_found_on_the_queue_of_the_service_that_takes_it() {
        assert_eq!(
            super::command_queue("app.install").as_deref(),
            Some("pvefleet.installer")
        );
        assert_eq!(
            super::command_queue("container.destroy").as_deref(),
            Some("pvefleet.provisioner")
        );
        assert_eq!(
            super::command_queue("container.created"),
            None,
            "an event is no command"
        );
    }

    use super::*;

    #[test]
    fn tier_labels_use_the_largest_whole_unit() {
        assert_eq!(tier_label(Duration::from_millis(250)), "250ms");
        assert_eq!(tier_label(Duration::from_secs(5)), "5s");
        assert_eq!(tier_label(Duration::from_secs(120)), "2m");
        assert_eq!(tier_label(Duration::from_secs(7200)), "2h");
        assert_eq!(wait_tier(Duration::from_secs(30)), "pvefleet.wait.30s");
    }

    #[test]
    fn every_command_type_is_bound_to_exactly_one_queue() {
        let reg = crate::registry();
        for info in reg.iter().filter(|m| m.kind == crate::Kind::Command) {
            let n = fleet_bindings()
                .iter()
                .flat_map(|(_, b)| b.iter())
                .filter(|(ex, rk)| *ex == COMMANDS_EXCHANGE && *rk == info.name)
                .count();
            assert_eq!(n, 1, "command {} is bound {n} times", info.name);
        }
    }
}
