//! Workers with an inbox handle deliveries in small batches: one Postgres transaction per
//! batch and one statement claiming every message's inbox row, so the commit, and its fsync, is
//! paid once per batch. A batch is whatever is already waiting, up to a limit, so a lone
//! message is never held back.
//!
//! Each message's inbox row and effects still stand or fall together. The batch first runs
//! without savepoints; when a message does not succeed, the transaction is rolled back and the
//! batch runs again with a savepoint per message: a failing message is rolled back to its
//! savepoint and its claim deleted, the others commit. The failed message is not run twice;
//! the messages before it are (handlers are idempotent, DESIGN.md §5).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tracing::Instrument;

use super::deliver::{Meta, ack, call, park, retry, retry_outage};
use super::handler::{Outcome, Route};
use super::runner::Shared;
use crate::db;
use crate::instrument::MessageHandled;

// A savepoint of the same name per message, released once the message succeeded; `ROLLBACK TO`
// always undoes just the newest, the current message's.
const SAVEPOINT: &str = "SAVEPOINT pvefleet_message";
const RELEASE: &str = "RELEASE SAVEPOINT pvefleet_message";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT pvefleet_message";

/// Why a message of the batch is handled or skipped.
enum Claim {
    /// New: handle it.
    New,
    /// Recorded before, or earlier in this same batch.
    Duplicate,
}

struct Item<'r> {
    d: Delivery,
    meta: Meta,
    route: &'r Route,
    body: Value,
}

/// How one message of a batch ended inside the transaction.
enum Done {
    Ok(Duration),
    Failed(Duration),
    Duplicate,
    Retry(Option<Duration>, String),
    Reject(String),
    Outage(String),
}

/// Handles a batch of deliveries in one transaction.
pub(super) async fn process_batch(shared: &Shared, batch: Vec<Delivery>) {
    let mut items = Vec::with_capacity(batch.len());
    for d in batch {
        let meta = Meta::of(shared, &d);
        match shared.check(&d) {
            Ok((route, body)) => items.push(Item { d, meta, route, body }),
            Err(r) => {
                let span = meta.span.clone();
                super::deliver::park_rejected(shared, &d, &meta, r)
                    .instrument(span)
                    .await;
            }
        }
    }
    if items.is_empty() {
        return;
    }
    let Some(pool) = &shared.deps.db else { return };
    let mut client = match pool.get().await {
        Ok(c) => TxClient {
            obj: Some(c),
            clean: false,
        },
        Err(e) => return retry_all(shared, &items, &format!("database unavailable: {e}")).await,
    };
    let Some(obj) = client.obj.as_ref() else { return };
    let raw: &deadpool_postgres::ClientWrapper = obj;
    let (claim_many, unclaim) = match tokio::try_join!(
        obj.prepare_cached(db::inbox::CLAIM_MANY_SQL),
        obj.prepare_cached(db::inbox::UNCLAIM_SQL)
    ) {
        Ok(s) => s,
        Err(e) => return retry_all(shared, &items, &format!("database unavailable: {e}")).await,
    };
    let stmts = Stmts { claim_many, unclaim };
    // Optimistic first: no savepoints, so a batch costs two round trips and one commit. If any
    // message does not succeed, or a handler left the transaction failed, the transaction is
    // rolled back and the batch runs again isolated: a savepoint per message, the failed
    // message's outcome carried over rather than run again.
    let mut isolated = false;
    let mut known = None;
    let (results, committed) = loop {
        match run_tx(shared, raw, &stmts, &items, isolated, known.take()).await {
            Ok(results) => {
                // A failed transaction answers COMMIT with a silent ROLLBACK; the SELECT before
                // it, pipelined, fails instead, so a rolled-back batch is never acked.
                let (check, commit) = tokio::join!(raw.simple_query("SELECT 1"), raw.batch_execute("COMMIT"));
                match (check, commit) {
                    (Ok(_), Ok(())) => break (results, Ok(())),
                    (Err(_), _) if !isolated => isolated = true,
                    (Err(e), _) | (_, Err(e)) => break (results, Err(format!("commit failed: {e}"))),
                }
            }
            Err(TxAbort::Undo(carried)) if !isolated => {
                isolated = true;
                known = carried;
            }
            // Savepoints isolate each message, so this cannot happen; retry rather than trust it.
            Err(TxAbort::Undo(..)) => {
                return retry_all(shared, &items, "batch could not isolate a failing message").await;
            }
            Err(TxAbort::Database(e)) => return retry_all(shared, &items, &e).await,
        }
    };
    client.clean = committed.is_ok();
    drop(client);
    if committed.is_ok()
        && let Some(poke) = &shared.spec.after_commit
    {
        poke.notify_one();
    }
    let queue = shared.spec.queue.as_str();
    // Acks, retries and parks of the batch go out concurrently, as they would for separate tasks.
    let finish = items.iter().zip(results).map(|(it, done)| {
        let (d, mtype, attempt) = (&it.d, it.meta.mtype.as_str(), it.meta.attempt);
        let committed = &committed;
        async move {
            match (done, committed) {
                (Done::Retry(after, error), _) => retry(shared, d, mtype, attempt, after, &error).await,
                (Done::Reject(reason), _) => park(shared, d, "rejected", &reason, attempt).await,
                (Done::Outage(error), _) => retry_outage(shared, d, mtype, attempt, &error).await,
                (_, Err(e)) => retry_outage(shared, d, mtype, attempt, e).await,
                (Done::Ok(elapsed), Ok(())) => {
                    ack(d).await;
                    MessageHandled {
                        queue,
                        message_type: mtype,
                        outcome: "ok",
                        elapsed,
                    }
                    .emit();
                }
                (Done::Failed(elapsed), Ok(())) => {
                    ack(d).await;
                    MessageHandled {
                        queue,
                        message_type: mtype,
                        outcome: "fail",
                        elapsed,
                    }
                    .emit();
                }
                (Done::Duplicate, Ok(())) => {
                    // Seen before: a redelivery or a duplicate publish; its effects are committed.
                    ack(d).await;
                    MessageHandled {
                        queue,
                        message_type: mtype,
                        outcome: "duplicate",
                        elapsed: Duration::ZERO,
                    }
                    .emit();
                }
            }
        }
        .instrument(it.meta.span.clone())
    });
    futures::future::join_all(finish).await;
}

/// A pooled connection that goes back to the pool only after its transaction ended cleanly.
/// On any other path (an error, a panic) it is closed instead, so no open or failed
/// transaction is ever lent to the next user.
struct TxClient {
    obj: Option<deadpool_postgres::Object>,
    clean: bool,
}

impl Drop for TxClient {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take().filter(|_| !self.clean) {
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}

struct Stmts {
    claim_many: tokio_postgres::Statement,
    unclaim: tokio_postgres::Statement,
}

/// Why a batch transaction was rolled back.
enum TxAbort {
    /// Without savepoints, a message did not succeed. Its index and outcome are carried over
    /// when the transaction was still usable; when it was already failed, an earlier handler
    /// may have caused the failure, so nothing is carried and every message runs again.
    Undo(Option<(usize, Done)>),
    /// The database failed; every message of the batch is retried.
    Database(String),
}

/// Runs the batch in one transaction, up to but excluding COMMIT. Isolated, each message has
/// its own savepoint; with `known`, message `known.0` is not run again: its outcome is `known.1`.
async fn run_tx(
    shared: &Shared,
    raw: &deadpool_postgres::ClientWrapper,
    stmts: &Stmts,
    items: &[Item<'_>],
    savepoints: bool,
    mut known: Option<(usize, Done)>,
) -> Result<Vec<Done>, TxAbort> {
    // BEGIN and the claim of the whole batch go out together, in one round trip. Sorted, so two
    // batches claiming the same ids take the row locks in the same order and cannot deadlock.
    let mut ids: Vec<&str> = items.iter().map(|it| it.meta.message_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let params: [&(dyn ToSql + Sync); 2] = [&shared.spec.name, &ids];
    let (begun, claimed) = tokio::join!(raw.batch_execute("BEGIN"), raw.query(&stmts.claim_many, &params));
    let claimed: HashSet<String> = match begun.and(claimed) {
        Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        Err(e) => {
            let _ = raw.batch_execute("ROLLBACK").await;
            return Err(TxAbort::Database(format!("cannot claim the inbox rows: {e}")));
        }
    };
    let mut handled_here: HashSet<&str> = HashSet::new();
    let mut results = Vec::with_capacity(items.len());
    for (index, it) in items.iter().enumerate() {
        let id = it.meta.message_id.as_str();
        let claim = if claimed.contains(id) && handled_here.insert(id) {
            Claim::New
        } else {
            Claim::Duplicate
        };
        let carried = match &known {
            Some((k, _)) if *k == index => known.take().map(|(_, d)| d),
            _ => None,
        };
        let done = match (carried, claim) {
            // Handled and committed elsewhere meanwhile (a redelivered copy): nothing to undo.
            (Some(_), Claim::Duplicate) => Done::Duplicate,
            (Some(done), Claim::New) => {
                // Its claim was made above; it did not succeed, so drop the claim again.
                let params: [&(dyn ToSql + Sync); 2] = [&shared.spec.name, &it.meta.message_id];
                raw.execute(&stmts.unclaim, &params)
                    .await
                    .map_err(|e| TxAbort::Database(format!("database error: {e}")))?;
                done
            }
            (None, claim) => match handle(shared, raw, &stmts.unclaim, it, claim, savepoints)
                .instrument(it.meta.span.clone())
                .await
            {
                Ok(done) => done,
                Err(e) => {
                    // The transaction is unusable: undo the whole batch and retry every message.
                    let _ = raw.batch_execute("ROLLBACK").await;
                    return Err(TxAbort::Database(format!("database error: {e}")));
                }
            },
        };
        if !savepoints && matches!(done, Done::Retry(..) | Done::Reject(_) | Done::Outage(_)) {
            // A handler that swallowed a failed statement leaves the transaction failed, and
            // every later handler fails through no fault of its own: its outcome is not its own.
            let usable = raw.simple_query("SELECT 1").await.is_ok();
            let _ = raw.batch_execute("ROLLBACK").await;
            return Err(TxAbort::Undo(usable.then_some((index, done))));
        }
        results.push(done);
    }
    Ok(results)
}

/// One message inside the batch transaction, under its own savepoint when `savepoint` is set.
async fn handle(
    shared: &Shared,
    db: &deadpool_postgres::ClientWrapper,
    unclaim: &tokio_postgres::Statement,
    it: &Item<'_>,
    claim: Claim,
    savepoint: bool,
) -> Result<Done, tokio_postgres::Error> {
    if let Claim::Duplicate = claim {
        return Ok(Done::Duplicate);
    }
    let started = Instant::now();
    if savepoint {
        db.batch_execute(SAVEPOINT).await?;
    }
    let ctx = it.meta.context(shared, &it.d, Some(db));
    let outcome = call(it.route, it.body.clone(), &ctx).await;
    let origin = ctx.origin();
    drop(ctx);
    // Undo this message's effects and its claim; the other messages of the batch stay. Without
    // a savepoint there is nothing to undo here: the caller rolls the whole batch back.
    let undo = || async {
        if !savepoint {
            return Ok(());
        }
        let params: [&(dyn ToSql + Sync); 2] = [&shared.spec.name, &it.meta.message_id];
        let (rolled_back, unclaimed) = tokio::join!(db.batch_execute(ROLLBACK_TO), db.execute(unclaim, &params));
        rolled_back.and(unclaimed.map(drop))
    };
    // Isolated, a handler that reports success must also have left the transaction usable: the
    // release fails if one of its statements failed, and then only this message is undone.
    let release = || async {
        if !savepoint {
            return Ok(None);
        }
        match db.batch_execute(RELEASE).await {
            Ok(()) => Ok(None),
            Err(e) => {
                undo().await?;
                Ok(Some(Done::Retry(
                    None,
                    format!("the handler left its transaction failed: {e}"),
                )))
            }
        }
    };
    Ok(match outcome {
        Outcome::Ok => release().await?.unwrap_or(Done::Ok(started.elapsed())),
        Outcome::Fail(error) => {
            tracing::warn!(code = %error.code, error = %error.message, "Handler reported a definitive failure.");
            let recorded = match it.route.fail.as_ref().and_then(|f| f(&it.body, error, &origin)) {
                Some(Ok(event)) => db::outbox::enqueue(db, &event).await.map_err(|e| format!("{e:#}")),
                Some(Err(e)) => Err(format!("cannot encode the failure event: {e}")),
                None => Ok(()),
            };
            match recorded {
                Ok(()) => release().await?.unwrap_or(Done::Failed(started.elapsed())),
                Err(e) => {
                    undo().await?;
                    Done::Retry(None, format!("cannot record the failure: {e}"))
                }
            }
        }
        Outcome::Retry { after, error } => {
            undo().await?;
            Done::Retry(after, error)
        }
        Outcome::Reject(reason) => {
            undo().await?;
            Done::Reject(reason)
        }
        Outcome::Outage(error) => {
            undo().await?;
            Done::Outage(error)
        }
    })
}

/// The database failed the whole batch: every message waits and comes back, without being
/// parked for an outage that is not its fault.
async fn retry_all(shared: &Shared, items: &[Item<'_>], error: &str) {
    let each = items
        .iter()
        .map(|it| retry_outage(shared, &it.d, &it.meta.mtype, it.meta.attempt, error).instrument(it.meta.span.clone()));
    futures::future::join_all(each).await;
}
