//! A saga kind's declared table: its forward steps and its compensations, each naming its
//! command and the events that end it by the contract's own types, how its command is built
//! from the saga's data, when it applies, and what undoes it. The router's entries, the plan,
//! the event-to-step lookup and the compensation order are all read from here; `validate`
//! refuses a table that cannot work before the service starts.

use pvefleet_contracts::registry::find_latest;
use pvefleet_contracts::routing::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE, fleet_bindings};
use pvefleet_contracts::{Command, Event, Kind as MessageKind, Message};
use pvefleet_core::bus::Outgoing;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::config::SagaSettings;
use serde_json::Value;
use uuid::Uuid;

/// How a completed forward step is undone when a later step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// Not declared: `validate` refuses the table. Every forward step must say.
    Unset,
    /// By this compensation (a key of the table's compensations).
    Step(&'static str),
    /// By an earlier forward step's compensation (destroying the container undoes its start).
    CoveredBy(&'static str),
    /// Nothing is left to undo, for the reason given.
    Nothing(&'static str),
}

type Build<D> = Box<dyn Fn(&D, &SagaSettings, &Origin) -> Result<Outgoing, serde_json::Error> + Send + Sync>;

/// One step: a command, the events that end it, and what undoes it.
pub struct StepDef<D> {
    /// The step's name in the saga's data (`create`).
    pub key: &'static str,
    /// The command type (`container.create`), also the step's name in the timeline.
    pub command: &'static str,
    /// The event that ends it well.
    pub done: &'static str,
    /// The event that ends it in failure (the command's `*_failed`).
    pub failed: &'static str,
    /// What undoes it, for forward steps.
    pub undo: Undo,
    /// Whether a failed attempt may have done part of the work, so its own undo runs too.
    pub undo_on_failure: bool,
    /// Whether it runs for this saga (`app: none` skips the install).
    pub applies: fn(&D, &SagaSettings) -> bool,
    /// Builds its command from the saga's data.
    pub build: Build<D>,
    /// Takes what its done event tells (the node a container landed on).
    pub on_done: fn(&mut D, &Value),
    /// The correlation id its events come back with when it is not the saga's own (a
    /// network operation's id).
    pub answers_on: fn(&D) -> Option<Uuid>,
    /// Whether a done event is this step's, when a compensation of the table ends with the
    /// same event type (a restore and the put-back that undoes it both answer
    /// `backup.restored`): a late one is then undone only if it is the step's own.
    pub owns: fn(&D, &Value) -> bool,
}

fn always<D>(_: &D, _: &SagaSettings) -> bool {
    true
}

fn nothing<D>(_: &mut D, _: &Value) {}

fn own<D>(_: &D) -> Option<Uuid> {
    None
}

fn any_event<D>(_: &D, _: &Value) -> bool {
    true
}

impl<D: 'static> StepDef<D> {
    /// A step running command `C`, ended by `E` or by `C`'s failure event; its command is
    /// `build` of the saga's data.
    pub fn new<C: Command, E: Event>(key: &'static str, build: fn(&D, &SagaSettings) -> C) -> Self {
        Self {
            key,
            command: C::TYPE,
            done: E::TYPE,
            failed: <C::Failed as Message>::TYPE,
            undo: Undo::Unset,
            undo_on_failure: false,
            applies: always,
            build: Box::new(move |d, s, origin| Outgoing::message(&build(d, s), origin)),
            on_done: nothing,
            answers_on: own,
            owns: any_event,
        }
    }

    /// What undoes it.
    pub fn undo(mut self, undo: Undo) -> Self {
        self.undo = undo;
        self
    }

    /// A failed attempt may have done part of its work: its undo runs for it too.
    pub fn undone_even_when_failed(mut self) -> Self {
        self.undo_on_failure = true;
        self
    }

    /// Runs only when `applies` says so.
    pub fn when(mut self, applies: fn(&D, &SagaSettings) -> bool) -> Self {
        self.applies = applies;
        self
    }

    /// Takes what the done event tells into the saga's data.
    pub fn on_done(mut self, f: fn(&mut D, &Value)) -> Self {
        self.on_done = f;
        self
    }

    /// Only done events `owns` says are its own are taken for a late copy of its work.
    pub fn owns(mut self, f: fn(&D, &Value) -> bool) -> Self {
        self.owns = f;
        self
    }

    /// Its events come back with this correlation id, not the saga's.
    pub fn answers_on(mut self, f: fn(&D) -> Option<Uuid>) -> Self {
        self.answers_on = f;
        self
    }
}

/// Whether a failed forward step compensates what was done, or is re-sent until it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Undo the completed steps in reverse (provisioning).
    Backward,
    /// Re-send the failed step, then stop for an operator (deprovisioning: going back would
    /// bring back what the user asked to remove).
    Forward,
}

/// A saga kind's table.
pub struct Table<D> {
    /// Forward steps, in order.
    pub forward: Vec<StepDef<D>>,
    /// Compensations, run in the reverse order of the steps they undo.
    pub compensations: Vec<StepDef<D>>,
    /// How a failed forward step is recovered.
    pub recovery: Recovery,
}

impl<D> Table<D> {
    /// The step of either list with `key`.
    pub fn step(&self, key: &str) -> Option<&StepDef<D>> {
        self.forward.iter().chain(&self.compensations).find(|s| s.key == key)
    }

    /// Every event type a step of the table ends with, once each.
    pub fn events(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for s in self.forward.iter().chain(&self.compensations) {
            for e in [s.done, s.failed] {
                if !out.contains(&e) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// The compensations that undo `done` (completed forward steps) and, for a step that may
    /// have done part of its work, `failed`: in reverse order, each once, those that apply.
    pub fn compensations_for(&self, done: &[String], failed: Option<&str>, data: &D, s: &SagaSettings) -> Vec<String> {
        let mut undone: Vec<&str> = done.iter().map(String::as_str).collect();
        if let Some(f) = failed.filter(|f| self.step(f).is_some_and(|st| st.undo_on_failure)) {
            undone.push(f);
        }
        let mut out: Vec<String> = Vec::new();
        for key in undone.iter().rev() {
            let Some(step) = self.forward.iter().find(|st| st.key == *key) else {
                continue;
            };
            if let Undo::Step(c) = step.undo
                && !out.iter().any(|o| o == c)
                && self.compensations.iter().any(|st| st.key == c && (st.applies)(data, s))
            {
                out.push(c.to_string());
            }
        }
        out
    }

    /// Why the table cannot work, if it cannot: a forward step that does not say what undoes
    /// it, an undo naming no compensation, a repeated key, or a command or event that is not
    /// the contract's or that nothing routes (a command no worker queue is bound to, an event
    /// the saga queue does not receive).
    pub fn validate(&self, kind: &str) -> Result<(), String> {
        let bindings = fleet_bindings();
        let saga_receives = |event: &str| {
            bindings
                .iter()
                .filter(|(q, _)| *q == "saga")
                .flat_map(|(_, b)| b.iter())
                .any(|(ex, pattern)| *ex == EVENTS_EXCHANGE && topic_matches(pattern, event))
        };
        let worker_takes = |command: &str| {
            bindings
                .iter()
                .flat_map(|(_, b)| b.iter())
                .any(|(ex, key)| *ex == COMMANDS_EXCHANGE && *key == command)
        };
        let mut keys: Vec<&str> = Vec::new();
        for (i, s) in self.forward.iter().chain(&self.compensations).enumerate() {
            let forward = i < self.forward.len();
            if keys.contains(&s.key) {
                return Err(format!("{kind}: step '{}' is declared twice", s.key));
            }
            keys.push(s.key);
            match (forward, s.undo) {
                (true, Undo::Unset) => {
                    return Err(format!(
                        "{kind}: forward step '{}' does not say what undoes it (Undo::Step, CoveredBy or Nothing)",
                        s.key
                    ));
                }
                (true, Undo::Step(c)) if !self.compensations.iter().any(|st| st.key == c) => {
                    return Err(format!(
                        "{kind}: step '{}' is undone by '{c}', which is no compensation of the table",
                        s.key
                    ));
                }
                (true, Undo::CoveredBy(k)) => {
                    let earlier = &self.forward[..i];
                    if !earlier.iter().any(|st| st.key == k && matches!(st.undo, Undo::Step(_))) {
                        return Err(format!(
                            "{kind}: step '{}' is covered by '{k}', which is no earlier step with a compensation",
                            s.key
                        ));
                    }
                }
                _ => {}
            }
            if !find_latest(s.command).is_some_and(|m| m.kind == MessageKind::Command) {
                return Err(format!("{kind}: '{}' is not a command of the contract", s.command));
            }
            if !worker_takes(s.command) {
                return Err(format!("{kind}: no worker queue is bound to command '{}'", s.command));
            }
            for e in [s.done, s.failed] {
                if !find_latest(e).is_some_and(|m| m.kind == MessageKind::Event) {
                    return Err(format!("{kind}: '{e}' is not an event of the contract"));
                }
                if !saga_receives(e) {
                    return Err(format!("{kind}: the saga queue is bound to nothing that routes '{e}'"));
                }
            }
        }
        Ok(())
    }
}

/// Whether a topic binding `pattern` (`container.*`, `#`) matches routing key `key`.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::engine::SagaKind;
    use crate::kinds::deprovision::Deprovision;
    use crate::kinds::provision::Provision;
    use crate::kinds::site::{self, SiteSaga};
    use crate::kinds::vnet::VnetProvisioning;
    use pvefleet_contracts::messages::{
        ContainerCreate, ContainerCreated, ContainerDestroy, ContainerDestroyed, NetAttach, NetAttached,
    };

    #[test]
    fn every_kind_s_table_validates() {
        Provision::new().table().validate("provision").unwrap();
        Deprovision::new().table().validate("deprovision").unwrap();
        VnetProvisioning::new().table().validate("vnet.provision").unwrap();
    }

    fn with_forward(extra: StepDef<SiteSaga>) -> Table<SiteSaga> {
        let mut table = Table {
            forward: vec![
                StepDef::new::<ContainerCreate, ContainerCreated>("create", site::create).undo(Undo::Step("destroy")),
            ],
            compensations: vec![StepDef::new::<ContainerDestroy, ContainerDestroyed>(
                "destroy",
                site::destroy,
            )],
            recovery: Recovery::Backward,
        };
        table.validate("test").expect("the base table is sound");
        table.forward.push(extra);
        table
    }

    #[test]
    fn a_step_without_an_undo_is_refused() {
        let table = with_forward(StepDef::new::<ContainerCreate, ContainerCreated>("again", site::create));
        let err = table.validate("test").unwrap_err();
        assert!(err.contains("'again' does not say what undoes it"), "{err}");
    }

    #[test]
    fn an_undo_naming_no_compensation_is_refused() {
        let table = with_forward(
            StepDef::new::<ContainerCreate, ContainerCreated>("again", site::create).undo(Undo::Step("unmake")),
        );
        let err = table.validate("test").unwrap_err();
        assert!(err.contains("'unmake', which is no compensation"), "{err}");
        let table = with_forward(
            StepDef::new::<ContainerCreate, ContainerCreated>("again", site::create).undo(Undo::CoveredBy("later")),
        );
        assert!(table.validate("test").unwrap_err().contains("covered by 'later'"));
    }

    #[test]
    fn a_step_whose_event_no_route_brings_to_the_saga_is_refused() {
        // net.attached goes to whoever asked for the attach, not to the saga queue: a saga
        // step waiting for it would wait for ever.
        let table = with_forward(
            StepDef::new::<NetAttach, NetAttached>("attach", |d: &SiteSaga, _| NetAttach {
                operation_id: d.site.site_id.as_uuid(),
                vmid: pvefleet_contracts::Vmid(d.vmid),
                iface: Default::default(),
            })
            .undo(Undo::Nothing("test")),
        );
        let err = table.validate("test").unwrap_err();
        assert!(err.contains("the saga queue is bound to nothing that routes"), "{err}");
    }

    #[test]
    fn a_key_declared_twice_is_refused() {
        let table = with_forward(
            StepDef::new::<ContainerCreate, ContainerCreated>("create", site::create).undo(Undo::Step("destroy")),
        );
        assert!(table.validate("test").unwrap_err().contains("declared twice"));
    }

    #[test]
    fn topic_patterns_match_as_rabbitmq_does() {
        assert!(topic_matches("container.*", "container.created"));
        assert!(!topic_matches("container.*", "container.create.failed"));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("vnet.ensured", "vnet.ensured"));
        assert!(!topic_matches("dns.*", "container.created"));
    }
}
