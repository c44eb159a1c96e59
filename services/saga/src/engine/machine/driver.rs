//! `Driver`: a kind's machine seen without its data type, as the coordinator, the deadline
//! scan and the operator tools use it (an event, an overdue step, a parked command, retry and
//! abort).

use super::*;

/// A kind's machine behind one object: what the coordinator, the deadline scan and the
/// operator tools call, whatever the kind.
#[async_trait]
pub trait Driver: Send + Sync {
    /// Which kind.
    fn kind(&self) -> Kind;
    /// Why its table cannot work, if it cannot.
    fn validate(&self) -> Result<(), String>;
    /// Every event type its steps end with.
    fn events(&self) -> Vec<&'static str>;
    /// Its steps: key, command and phase, forward steps first.
    fn steps(&self) -> Vec<(&'static str, &'static str, Phase)>;
    /// An event for saga `row` (found by `correlation`).
    async fn on_event(&self, x: &Exec<'_>, row: store::Row, mtype: &str, body: &Value, correlation: Uuid) -> Handled;
    /// A saga past its deadline: its step is re-sent, or it stops for an operator.
    async fn overdue(&self, x: &Exec<'_>, row: store::Row) -> anyhow::Result<Option<Overdue>>;
    /// Command `command` of saga `row` was parked as dead letter `dead_letter`.
    async fn parked(
        &self,
        x: &Exec<'_>,
        row: store::Row,
        command: &str,
        dead_letter: Uuid,
        fault_class: &str,
    ) -> Handled;
    /// An operator re-sends the step in flight; returns its command.
    async fn retry_step(&self, x: &Exec<'_>, row: store::Row) -> anyhow::Result<String>;
    /// An operator aborts the saga: what was done is compensated; returns the compensations.
    async fn abort(&self, x: &Exec<'_>, row: store::Row, actor: &str) -> anyhow::Result<Vec<String>>;
}

fn to_anyhow(e: HandlerError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

#[async_trait]
impl<K: SagaKind> Driver for Machine<K> {
    fn kind(&self) -> Kind {
        self.kind.kind()
    }

    fn validate(&self) -> Result<(), String> {
        self.kind.table().validate(self.kind.kind().as_str())
    }

    fn events(&self) -> Vec<&'static str> {
        self.kind.table().events()
    }

    fn steps(&self) -> Vec<(&'static str, &'static str, Phase)> {
        let t = self.kind.table();
        t.forward
            .iter()
            .map(|s| (s.key, s.command, Phase::Forward))
            .chain(t.compensations.iter().map(|s| (s.key, s.command, Phase::Compensate)))
            .collect()
    }

    async fn on_event(&self, x: &Exec<'_>, row: store::Row, mtype: &str, body: &Value, correlation: Uuid) -> Handled {
        let mut saga = self.decode(&row)?;
        let Some((key, phase)) = self.in_flight(&saga).map(|(k, p)| (k.to_string(), p)) else {
            return self.late(x, &saga, mtype, body, correlation).await;
        };
        let Some(def) = self.kind.table().step(&key) else {
            return Err(HandlerError::rejected(format!(
                "saga {} names step '{key}', which its table has not",
                saga.id
            )));
        };
        if (mtype != def.done && mtype != def.failed) || answers_on(def, &saga) != correlation {
            return self.late(x, &saga, mtype, body, correlation).await;
        }
        let command = def.command;
        if mtype == def.done {
            (def.on_done)(&mut saga.data, body);
            return match phase {
                Phase::Forward => {
                    saga.progress.done.push(key.clone());
                    let next = saga.step + 1;
                    match saga.progress.plan.get(next).cloned() {
                        Some(next_key) => {
                            saga.step = next;
                            store::save_done(x.db, saga.id, State::Running, next, &Self::encode(&saga), command)
                                .await
                                .map_err(db)?;
                            self.send_step(x, &saga, &next_key, Phase::Forward).await
                        }
                        None => self.complete(x, saga, Some(&key)).await,
                    }
                }
                Phase::Compensate => {
                    store::finished(x.db, saga.id, command, Phase::Compensate, None)
                        .await
                        .map_err(db)?;
                    store::reset_resends(x.db, saga.id).await.map_err(db)?;
                    let next = saga.step + 1;
                    self.compensate_from(x, saga, next).await
                }
            };
        }
        let error: StepError = serde_json::from_value(body.get("error").cloned().unwrap_or(Value::Null))
            .unwrap_or_else(|_| StepError::new("unknown", format!("{mtype} without a readable error")));
        store::finished(x.db, saga.id, command, phase, Some(&json!(error)))
            .await
            .map_err(db)?;
        match phase {
            Phase::Forward => self.forward_failed(x, saga, key, error, body).await,
            Phase::Compensate => self.resend_or_give_up(x, saga, &key, Phase::Compensate, error).await,
        }
    }

    async fn overdue(&self, x: &Exec<'_>, row: store::Row) -> anyhow::Result<Option<Overdue>> {
        let saga = self.decode(&row).map_err(to_anyhow)?;
        let Some((key, phase)) = self.in_flight(&saga).map(|(k, p)| (k.to_string(), p)) else {
            store::clear_deadline(x.db, saga.id).await?;
            return Ok(None);
        };
        let Some(def) = self.kind.table().step(&key) else {
            store::clear_deadline(x.db, saga.id).await?;
            return Ok(None);
        };
        let command = def.command.to_string();
        let timeout = x.settings.timeout_of(def.command);
        let sends = u32::try_from(row.step_sends).unwrap_or(0);
        if sends < x.settings.step_resends {
            let out = (def.build)(&saga.data, x.settings, &x.origin_of(answers_on(def, &saga)))?;
            x.enqueue(&out).await.map_err(to_anyhow)?;
            let resend = sends + 1;
            store::resent(x.db, saga.id, def.command, phase, timeout.as_secs_f64(), resend as i32).await?;
            tracing::warn!(saga = %saga.id, step = %command, resend, timeout = ?timeout, "No answer by the step's deadline; the command is sent again.");
            return Ok(Some(Overdue::Resent {
                saga: saga.id,
                step: command,
                resend,
            }));
        }
        let error = StepError::new(
            "step.deadline",
            format!(
                "no answer to {command} within {} after {} sends",
                humantime::format_duration(timeout),
                sends + 1
            ),
        );
        store::finished(x.db, saga.id, def.command, phase, Some(&json!(error))).await?;
        let state = self
            .give_up(x, saga.clone(), &key, phase, &error)
            .await
            .map_err(to_anyhow)?;
        Ok(Some(Overdue::GaveUp {
            saga: saga.id,
            step: command,
            state: state.as_str().to_string(),
        }))
    }

    async fn parked(
        &self,
        x: &Exec<'_>,
        row: store::Row,
        command: &str,
        dead_letter: Uuid,
        fault_class: &str,
    ) -> Handled {
        let mut saga = self.decode(&row)?;
        let Some((key, phase)) = self.in_flight(&saga).map(|(k, p)| (k.to_string(), p)) else {
            return Ok(());
        };
        if self.kind.table().step(&key).map(|d| d.command) != Some(command) {
            // Not the step in flight: an old copy; the saga is not waiting on it.
            return Ok(());
        }
        let state = match phase {
            Phase::Forward => State::Suspended,
            Phase::Compensate => State::CompensationFailed,
        };
        let detail = json!({
            "step": command,
            "dead_letter_id": dead_letter.to_string(),
            "error": { "code": "parked", "message": format!("the command was parked ({fault_class}); see pvefleet dlq show {dead_letter}") },
        });
        store::stop(x.db, saga.id, state, &detail).await.map_err(db)?;
        saga.state = state;
        self.kind.stopped(x, &saga, state, &detail).await?;
        tracing::error!(saga = %saga.id, step = command, dead_letter = %dead_letter, state = state.as_str(), "A saga's command was parked; the saga waits for an operator.");
        Ok(())
    }

    async fn retry_step(&self, x: &Exec<'_>, row: store::Row) -> anyhow::Result<String> {
        let mut saga = self.decode(&row).map_err(to_anyhow)?;
        let (state, phase, key) = match saga.state {
            State::CompensationFailed | State::Compensating => (
                State::Compensating,
                Phase::Compensate,
                saga.progress.compensations.get(saga.step),
            ),
            State::Suspended | State::Running => (State::Running, Phase::Forward, saga.progress.plan.get(saga.step)),
            other => anyhow::bail!("saga {} is {}; there is no step to retry", saga.id, other.as_str()),
        };
        let key = key
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("saga {} has no step {} to retry", saga.id, saga.step))?;
        saga.state = state;
        store::save(x.db, saga.id, state, saga.step, &Self::encode(&saga)).await?;
        store::reset_resends(x.db, saga.id).await?;
        self.send_step(x, &saga, &key, phase).await.map_err(to_anyhow)?;
        Ok(self
            .kind
            .table()
            .step(&key)
            .map_or(key.clone(), |d| d.command.to_string()))
    }

    async fn abort(&self, x: &Exec<'_>, row: store::Row, actor: &str) -> anyhow::Result<Vec<String>> {
        let mut saga = self.decode(&row).map_err(to_anyhow)?;
        let table = self.kind.table();
        anyhow::ensure!(
            table.recovery == Recovery::Backward,
            "only sagas that compensate can be aborted; a {} recovers forward",
            self.kind.kind().as_str()
        );
        anyhow::ensure!(
            matches!(saga.state, State::Running | State::Suspended),
            "saga {} is {}; only running or suspended sagas can be aborted",
            saga.id,
            saga.state.as_str()
        );
        let current = saga
            .progress
            .plan
            .get(saga.step)
            .cloned()
            .unwrap_or_else(|| saga.progress.plan.first().cloned().unwrap_or_default());
        saga.progress.failure = Some((current, StepError::new("aborted", format!("aborted by {actor}"))));
        saga.progress.compensations = table.compensations_for(&saga.progress.done, None, &saga.data, x.settings);
        let queued: Vec<String> = saga
            .progress
            .compensations
            .iter()
            .filter_map(|k| table.step(k).map(|d| d.command.to_string()))
            .collect();
        store::reset_resends(x.db, saga.id).await?;
        self.compensate_from(x, saga, 0).await.map_err(to_anyhow)?;
        Ok(queued)
    }
}
