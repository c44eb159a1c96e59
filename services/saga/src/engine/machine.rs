//! The state machine, for any kind: a saga goes forward through its plan; a failed forward
//! step is compensated in reverse (or, recovering forward, re-sent); a compensation that keeps
//! failing, or a forward step that does, stops the saga for an operator. `Driver` is the same
//! machine behind one object per kind, so the coordinator can hold every kind in one map.

use async_trait::async_trait;
use pvefleet_contracts::messages::{SagaCompensationFailed, SagaSuspended};
use pvefleet_contracts::{SiteId, StepError};
use pvefleet_core::bus::{Handled, HandlerError};
use serde_json::{Value, json};
use uuid::Uuid;

use super::table::{Recovery, StepDef, Undo};
use super::{Exec, Kind, OnFailure, Phase, Progress, Saga, SagaKind, State, Stored, store};

/// What the deadline scan did to one overdue saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overdue {
    /// The step was sent again (the n-th re-send).
    Resent { saga: Uuid, step: String, resend: u32 },
    /// The saga gave up: its new state.
    GaveUp { saga: Uuid, step: String, state: String },
}

/// One kind's machine.
pub struct Machine<K: SagaKind> {
    kind: K,
}

/// The correlation id a step's command is sent with: the one its events come back on (the
/// step's own operation, for network steps, else the saga's id). A worker's own events and the
/// runner's failure event for it then both find the step, and a parked copy of the command
/// names it.
fn answers_on<D>(def: &StepDef<D>, saga: &Saga<D>) -> Uuid {
    (def.answers_on)(&saga.data).unwrap_or(saga.id)
}

fn db(e: tokio_postgres::Error) -> HandlerError {
    HandlerError::from(e)
}

impl<K: SagaKind> Machine<K> {
    /// The machine of `kind`.
    pub fn new(kind: K) -> Self {
        Self { kind }
    }

    /// The kind.
    pub fn kind(&self) -> &K {
        &self.kind
    }

    fn decode(&self, r: &store::Row) -> Result<Saga<K::Data>, HandlerError> {
        let stored: Stored<K::Data> = serde_json::from_value(r.data.clone()).map_err(|e| {
            HandlerError::reject(anyhow::Error::new(e).context(format!("saga {} has data that does not decode", r.id)))
        })?;
        let state = State::parse(&r.state)
            .ok_or_else(|| HandlerError::rejected(format!("saga {} is in an unknown state '{}'", r.id, r.state)))?;
        Ok(Saga {
            id: r.id,
            state,
            step: usize::try_from(r.step).unwrap_or(0),
            site_id: r.site_id,
            progress: stored.progress,
            data: stored.data,
        })
    }

    fn encode(saga: &Saga<K::Data>) -> Value {
        let stored = Stored {
            progress: saga.progress.clone(),
            data: saga.data.clone(),
        };
        serde_json::to_value(&stored).unwrap_or(Value::Null)
    }

    /// Starts saga `id` with `data`: its plan is the forward steps that apply; the first is
    /// sent (or, with none, the saga completes at once). `answers_on` are the correlation ids
    /// its steps' events come back with, besides its own. Returns `false`, doing nothing, when
    /// the saga exists already (a redelivered start).
    pub async fn start(
        &self,
        x: &Exec<'_>,
        id: Uuid,
        site: Option<Uuid>,
        data: K::Data,
        answers_on: &[Uuid],
    ) -> Result<bool, HandlerError> {
        let table = self.kind.table();
        let plan: Vec<String> = table
            .forward
            .iter()
            .filter(|s| (s.applies)(&data, x.settings))
            .map(|s| s.key.to_string())
            .collect();
        let saga = Saga {
            id,
            state: State::Running,
            step: 0,
            site_id: site,
            progress: Progress {
                plan,
                ..Progress::default()
            },
            data,
        };
        if !store::insert(x.db, id, self.kind.kind(), site, State::Running, &Self::encode(&saga))
            .await
            .map_err(db)?
        {
            return Ok(false);
        }
        store::correlate(x.db, id, answers_on).await.map_err(db)?;
        match saga.progress.plan.first().cloned() {
            Some(first) => self.send_step(x, &saga, &first, Phase::Forward).await?,
            None => self.complete(x, saga, None).await?,
        }
        Ok(true)
    }

    /// Queues the command of step `key` and records it in the timeline with its deadline.
    async fn send_step(&self, x: &Exec<'_>, saga: &Saga<K::Data>, key: &str, phase: Phase) -> Handled {
        let def = self.kind.table().step(key).ok_or_else(|| {
            HandlerError::rejected(format!("saga {} names step '{key}', which its table has not", saga.id))
        })?;
        let out = (def.build)(&saga.data, x.settings, &x.origin_of(answers_on(def, saga))).map_err(|e| {
            HandlerError::retry(anyhow::Error::new(e).context(format!("cannot encode {}", def.command)))
        })?;
        x.enqueue(&out).await?;
        let timeout = x.settings.timeout_of(def.command).as_secs_f64();
        store::sent(x.db, saga.id, def.command, phase, timeout)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// After forward step `last` (if any): every step is done.
    async fn complete(&self, x: &Exec<'_>, mut saga: Saga<K::Data>, last: Option<&str>) -> Handled {
        saga.state = State::Completed;
        saga.step = saga.progress.plan.len();
        let data = Self::encode(&saga);
        match last.and_then(|k| self.kind.table().step(k)) {
            Some(def) => store::save_done(x.db, saga.id, State::Completed, saga.step, &data, def.command).await,
            None => store::save(x.db, saga.id, State::Completed, saga.step, &data).await,
        }
        .map_err(db)?;
        self.kind.completed(x, &saga).await
    }

    /// Runs the compensation at `index`, or, past the last, ends the saga failed.
    async fn compensate_from(&self, x: &Exec<'_>, mut saga: Saga<K::Data>, index: usize) -> Handled {
        saga.step = index;
        match saga.progress.compensations.get(index).cloned() {
            Some(key) => {
                saga.state = State::Compensating;
                store::save(x.db, saga.id, State::Compensating, index, &Self::encode(&saga))
                    .await
                    .map_err(db)?;
                self.send_step(x, &saga, &key, Phase::Compensate).await
            }
            None => {
                saga.state = State::Failed;
                store::save(x.db, saga.id, State::Failed, index, &Self::encode(&saga))
                    .await
                    .map_err(db)?;
                let (step, error) = saga
                    .progress
                    .failure
                    .clone()
                    .unwrap_or_else(|| ("?".into(), StepError::new("unknown", "no failure recorded")));
                let command = self.kind.table().step(&step).map_or(step.as_str(), |d| d.command);
                self.kind.failed(x, &saga, command, &error).await
            }
        }
    }

    /// Re-sends a failed step (at most `saga.compensation_attempts` times), then stops.
    async fn resend_or_give_up(
        &self,
        x: &Exec<'_>,
        saga: Saga<K::Data>,
        key: &str,
        phase: Phase,
        error: StepError,
    ) -> Handled {
        let resends = store::bump_resends(x.db, saga.id).await.map_err(db)?;
        if resends < x.settings.compensation_attempts as i32 {
            return self.send_step(x, &saga, key, phase).await;
        }
        self.give_up(x, saga, key, phase, &error).await.map(drop)
    }

    /// Stops the saga for an operator: `compensation_failed` when a compensation gave up,
    /// `suspended` when a forward step did. Returns the new state.
    async fn give_up(
        &self,
        x: &Exec<'_>,
        mut saga: Saga<K::Data>,
        key: &str,
        phase: Phase,
        error: &StepError,
    ) -> Result<State, HandlerError> {
        let state = match phase {
            Phase::Compensate => State::CompensationFailed,
            Phase::Forward => State::Suspended,
        };
        let command = self.kind.table().step(key).map_or(key, |d| d.command);
        let detail = json!({ "step": command, "error": error });
        store::stop(x.db, saga.id, state, &detail).await.map_err(db)?;
        saga.state = state;
        self.kind.stopped(x, &saga, state, &detail).await?;
        // Someone must look: the notifier tells the operators (and the site's owner's record
        // says whose it is).
        let (kind, site_id) = (self.kind.kind().as_str().to_string(), saga.site_id.map(SiteId));
        let (step, cause) = (command.to_string(), error.clone());
        match state {
            State::CompensationFailed => {
                x.send(
                    saga.id,
                    &SagaCompensationFailed {
                        saga_id: saga.id,
                        kind,
                        site_id,
                        step,
                        error: cause,
                    },
                )
                .await?
            }
            _ => {
                x.send(
                    saga.id,
                    &SagaSuspended {
                        saga_id: saga.id,
                        kind,
                        site_id,
                        step,
                        error: cause,
                    },
                )
                .await?
            }
        }
        tracing::error!(saga = %saga.id, step = command, error = %error.message, state = state.as_str(), "The saga gave up; an operator must look.");
        Ok(state)
    }

    /// The step in flight and its phase.
    fn in_flight<'s>(&self, saga: &'s Saga<K::Data>) -> Option<(&'s str, Phase)> {
        match saga.state {
            State::Running => saga.progress.plan.get(saga.step).map(|k| (k.as_str(), Phase::Forward)),
            State::Compensating => saga
                .progress
                .compensations
                .get(saga.step)
                .map(|k| (k.as_str(), Phase::Compensate)),
            _ => None,
        }
    }

    /// An event for a step that is not in flight. Mostly a duplicate, ignored; but a forward
    /// step's done event after the saga undid that step (or after another saga took down what
    /// it built) means a late copy of its command did the work again: a redelivery, or a copy retried through the wait
    /// tiers after the saga moved on. That work is undone again: the step's compensation is
    /// sent once more, outside the saga's timeline (compensations are idempotent).
    async fn late(&self, x: &Exec<'_>, saga: &Saga<K::Data>, mtype: &str, body: &Value, correlation: Uuid) -> Handled {
        let table = self.kind.table();
        let redone = table
            .forward
            .iter()
            .find(|s| s.done == mtype && answers_on(s, saga) == correlation && (s.owns)(&saga.data, body));
        let given_up = match saga.state {
            State::Compensating | State::Failed | State::CompensationFailed | State::Superseded => true,
            State::Completed if redone.is_some() => self.kind.withdrawn(x, saga).await?,
            _ => false,
        };
        let (Some(step), true, Recovery::Backward) = (redone, given_up, table.recovery) else {
            tracing::info!(event = mtype, saga = %saga.id, state = saga.state.as_str(), "A late or duplicate event for a step not in flight; ignored.");
            return Ok(());
        };
        let Undo::Step(undo) = step.undo else {
            return Ok(());
        };
        // A compensation still to come in this saga undoes it anyway.
        let pending =
            saga.state == State::Compensating && saga.progress.compensations.iter().skip(saga.step).any(|c| c == undo);
        // What the done event tells decides whether the undo applies (a VNet it created).
        let mut data = saga.data.clone();
        (step.on_done)(&mut data, body);
        let Some(comp) = table.step(undo).filter(|c| !pending && (c.applies)(&data, x.settings)) else {
            return Ok(());
        };
        let redo = Saga { data, ..saga.clone() };
        let out = (comp.build)(&redo.data, x.settings, &x.origin_of(answers_on(comp, &redo))).map_err(|e| {
            HandlerError::retry(anyhow::Error::new(e).context(format!("cannot encode {}", comp.command)))
        })?;
        x.enqueue(&out).await?;
        tracing::warn!(saga = %saga.id, event = mtype, state = saga.state.as_str(), undo = comp.command, "A step the saga had undone was done again by a late copy of its command; undoing it again.");
        Ok(())
    }

    async fn forward_failed(
        &self,
        x: &Exec<'_>,
        mut saga: Saga<K::Data>,
        key: String,
        error: StepError,
        event: &Value,
    ) -> Handled {
        match self.kind.step_failed(x, &mut saga, &key, &error, event).await? {
            OnFailure::Resend => {
                store::save(x.db, saga.id, State::Running, saga.step, &Self::encode(&saga))
                    .await
                    .map_err(db)?;
                self.send_step(x, &saga, &key, Phase::Forward).await
            }
            OnFailure::Skip => {
                tracing::info!(saga = %saga.id, step = %key, reason = %error.message, "A step had nothing to do; going on.");
                let next = saga.step + 1;
                match saga.progress.plan.get(next).cloned() {
                    Some(next_key) => {
                        saga.step = next;
                        store::save(x.db, saga.id, State::Running, next, &Self::encode(&saga))
                            .await
                            .map_err(db)?;
                        self.send_step(x, &saga, &next_key, Phase::Forward).await
                    }
                    None => self.complete(x, saga, None).await,
                }
            }
            OnFailure::Recover => match self.kind.table().recovery {
                Recovery::Forward => self.resend_or_give_up(x, saga, &key, Phase::Forward, error).await,
                Recovery::Backward => {
                    saga.progress.compensations =
                        self.kind
                            .table()
                            .compensations_for(&saga.progress.done, Some(&key), &saga.data, x.settings);
                    saga.progress.failure = Some((key, error));
                    self.compensate_from(x, saga, 0).await
                }
            },
        }
    }
}

mod driver;

pub use driver::Driver;
