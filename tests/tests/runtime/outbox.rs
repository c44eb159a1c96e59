//! The outbox relay and the inbox: a relay killed between publish and mark republishes, and the
//! inbox drops the duplicates. Also: the app creates its database and migrates idempotently.

use pvefleet_core::bus::Router;
use pvefleet_core::db;
use pvefleet_core::db::outbox::OutboxRelay;
use pvefleet_testkit::{TestDb, TestVhost, eventually, init_tracing, settings};
use pvefleet_tests::{RecordsEffect, TEST_QUEUE};

use crate::support::*;

const N: i64 = 20;

async fn count(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

#[tokio::test]
async fn an_outbox_relay_killed_between_publish_and_mark_republishes_and_the_inbox_drops_the_duplicates()
-> anyhow::Result<()> {
    init_tracing();
    let vhost = TestVhost::new()?;
    let tdb = TestDb::fresh_name();
    let s = settings(&vhost, Some(&tdb));
    // The database does not exist yet: connecting creates it, migrating twice is harmless.
    let pool = db::connect(&s.db).await?;
    let applied = db::migrate(&pool).await?;
    assert_eq!(applied, db::embedded_migrations());
    assert!(db::migrate(&pool).await?.is_empty(), "a second migrate applies nothing");
    let client = tdb.client().await?;
    client
        .batch_execute("CREATE TABLE effects (message_id TEXT NOT NULL, hostname TEXT NOT NULL)")
        .await?;
    let _publisher = publisher(&s).await?; // declares the topology

    // State change and outgoing messages in one transaction.
    {
        let mut c = pool.get().await?;
        let tx = c.transaction().await?;
        for i in 0..N {
            db::outbox::enqueue(&tx, &command(&format!("site-{i}"))).await?;
        }
        tx.commit().await?;
    }

    // A relay process publishes the batch with confirms and dies before marking it sent.
    let config = child_config(&s)?;
    let mut child = chaos_worker(&config, &["relay-abort"])?;
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    assert!(!status.success(), "the relay process must have died in the hook");
    assert_eq!(
        count(&client, "SELECT count(*) FROM outbox WHERE sent_at IS NULL").await?,
        N,
        "nothing was marked sent"
    );
    assert_eq!(
        i64::from(queue_len(&vhost, TEST_QUEUE).await?),
        N,
        "but all of it was published"
    );

    // The next relay republishes everything: duplicates, not losses.
    let relay = OutboxRelay::new(pool.clone(), publisher(&s).await?, s.outbox.clone());
    assert_eq!(relay.relay_once().await? as i64, N);
    assert_eq!(
        count(&client, "SELECT count(*) FROM outbox WHERE sent_at IS NULL").await?,
        0
    );
    assert_eq!(
        i64::from(queue_len(&vhost, TEST_QUEUE).await?),
        2 * N,
        "each message is in the queue twice"
    );

    // A worker with the inbox on applies each message's effect exactly once.
    let worker = start_worker(&s, Router::new().command(RecordsEffect), Some(pool.clone()), true);
    let drained = eventually(LONG, || async {
        (queue_len(&vhost, TEST_QUEUE).await.ok()? == 0).then_some(())
    })
    .await;
    // The queue count excludes unacked deliveries; wait for the inbox too.
    let inbox = eventually(LONG, || async {
        let n = count(&client, "SELECT count(*) FROM inbox").await.ok()?;
        (n == N).then_some(n)
    })
    .await;
    worker.stop().await?;
    assert!(drained.is_some(), "the worker consumed all {} deliveries", 2 * N);
    assert_eq!(inbox, Some(N));
    assert_eq!(
        count(&client, "SELECT count(*) FROM effects").await?,
        N,
        "one effect per message, duplicates dropped"
    );
    assert_eq!(
        count(&client, "SELECT count(DISTINCT message_id) FROM effects").await?,
        N
    );
    assert_eq!(queue_len(&vhost, TEST_QUEUE).await?, 0);
    drop(pool);
    Ok(())
}

#[tokio::test]
async fn a_failed_outbox_publish_stays_pending_with_its_error_and_backs_off() -> anyhow::Result<()> {
    init_tracing();
    let vhost = TestVhost::new()?;
    let tdb = TestDb::create().await?;
    let s = settings(&vhost, Some(&tdb));
    let pool = db::connect(&s.db).await?;
    db::migrate(&pool).await?;
    // No work queue is bound: the mandatory command is unroutable.
    let publisher = pvefleet_core::bus::Publisher::new(&s.bus, "t", Some(pvefleet_core::bus::Topology::base(&s.bus)));
    {
        let c = pool.get().await?;
        db::outbox::enqueue(&c, &command("unroutable")).await?;
    }
    let relay = OutboxRelay::new(pool.clone(), publisher, s.outbox.clone());
    assert_eq!(relay.relay_once().await?, 1);
    let client = tdb.client().await?;
    let row = client
        .query_one(
            "SELECT sent_at IS NULL, attempts, last_error, next_attempt_at > now() FROM outbox",
            &[],
        )
        .await?;
    assert!(row.get::<_, bool>(0), "not marked sent");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert!(
        row.get::<_, Option<String>>(2)
            .unwrap_or_default()
            .contains("no queue is bound")
    );
    assert!(row.get::<_, bool>(3), "the next attempt is scheduled later");
    assert_eq!(relay.relay_once().await?, 0, "backing off: not retried at once");
    Ok(())
}

/// Writes an effect, then fails transiently on the first attempt for hostname "flaky".
struct FlakyWriter;

#[async_trait::async_trait]
impl pvefleet_core::bus::Handler<pvefleet_contracts::messages::ContainerCreate> for FlakyWriter {
    async fn handle(
        &self,
        msg: pvefleet_contracts::messages::ContainerCreate,
        ctx: &pvefleet_core::bus::Context<'_>,
    ) -> pvefleet_core::bus::Handled {
        use pvefleet_core::bus::HandlerError;
        let Some(db) = ctx.db else {
            return Err(pvefleet_core::bus::HandlerError::rejected("needs the inbox"));
        };
        if let Err(e) = db
            .exec(
                "INSERT INTO effects (message_id, hostname) VALUES ($1, $2)",
                &[&ctx.message_id, &msg.hostname],
            )
            .await
        {
            return Err(HandlerError::transient(e));
        }
        if msg.hostname == "flaky" && ctx.attempt == 1 {
            return Err(HandlerError::transient("the node is busy"));
        }
        if msg.hostname == "refused" {
            return Err(HandlerError::rejected("policy says no"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn in_an_inbox_batch_a_failing_message_is_undone_alone_and_retried_while_the_rest_commit() -> anyhow::Result<()> {
    init_tracing();
    let vhost = TestVhost::new()?;
    let tdb = TestDb::create().await?;
    let mut s = settings(&vhost, Some(&tdb));
    s.worker.concurrency = 32;
    let pool = db::connect(&s.db).await?;
    db::migrate(&pool).await?;
    let client = tdb.client().await?;
    client
        .batch_execute("CREATE TABLE effects (message_id TEXT NOT NULL, hostname TEXT NOT NULL)")
        .await?;
    let publisher = publisher(&s).await?;
    // Queue everything first, so the worker takes it in batches.
    let hosts: Vec<String> = (0..10)
        .map(|i| format!("ok-{i}"))
        .chain(["flaky".to_string(), "refused".to_string()])
        .collect();
    for h in &hosts {
        publisher.publish(&command(h)).await?;
    }
    let mut spec_settings = s.clone();
    spec_settings.db.pool_size = 2; // one batch connection: all twelve in one or two transactions
    let worker = start_worker(
        &spec_settings,
        Router::new().command(FlakyWriter),
        Some(pool.clone()),
        true,
    );
    let done = eventually(LONG, || async {
        let n = count(&client, "SELECT count(*) FROM effects WHERE hostname = 'flaky'")
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;
    let ch = vhost.probe().await?;
    let parked = pvefleet_testkit::broker::take(&ch, pvefleet_contracts::routing::PARKED_QUEUE, 1, LONG).await?;
    worker.stop().await?;
    assert!(done.is_some(), "the flaky message was retried and committed");
    assert_eq!(
        count(&client, "SELECT count(*) FROM effects").await?,
        11,
        "ten ok + flaky once; refused and flaky's first attempt were undone"
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM effects WHERE hostname = 'refused'").await?,
        0
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM inbox").await?,
        11,
        "the refused message's claim was undone too"
    );
    assert_eq!(parked.len(), 1);
    assert_eq!(queue_len(&vhost, TEST_QUEUE).await?, 0);
    Ok(())
}

/// Swallows a failed statement and claims success for hostname "swallow": a handler bug.
struct SwallowsErrors;

#[async_trait::async_trait]
impl pvefleet_core::bus::Handler<pvefleet_contracts::messages::ContainerCreate> for SwallowsErrors {
    async fn handle(
        &self,
        msg: pvefleet_contracts::messages::ContainerCreate,
        ctx: &pvefleet_core::bus::Context<'_>,
    ) -> pvefleet_core::bus::Handled {
        let Some(db) = ctx.db else {
            return Err(pvefleet_core::bus::HandlerError::rejected("needs the inbox"));
        };
        if msg.hostname == "swallow" {
            let _ = db.exec("SELECT 1 / 0", &[]).await; // fails, leaving the transaction failed
            return Ok(());
        }
        match db
            .exec(
                "INSERT INTO effects (message_id, hostname) VALUES ($1, $2)",
                &[&ctx.message_id, &msg.hostname],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(pvefleet_core::bus::HandlerError::transient(e)),
        }
    }
}

#[tokio::test]
async fn a_handler_that_leaves_the_batch_transaction_failed_never_gets_its_batch_acked_as_committed()
-> anyhow::Result<()> {
    init_tracing();
    let vhost = TestVhost::new()?;
    let tdb = TestDb::create().await?;
    let mut s = settings(&vhost, Some(&tdb));
    s.worker.concurrency = 32;
    s.db.pool_size = 2;
    let pool = db::connect(&s.db).await?;
    db::migrate(&pool).await?;
    let client = tdb.client().await?;
    client
        .batch_execute("CREATE TABLE effects (message_id TEXT NOT NULL, hostname TEXT NOT NULL)")
        .await?;
    let publisher = publisher(&s).await?;
    for h in ["a", "b", "swallow", "c", "d"] {
        publisher.publish(&command(h)).await?;
    }
    let worker = start_worker(&s, Router::new().command(SwallowsErrors), Some(pool.clone()), true);
    let ch = vhost.probe().await?;
    let parked = pvefleet_testkit::broker::take(&ch, pvefleet_contracts::routing::PARKED_QUEUE, 1, LONG).await?;
    worker.stop().await?;
    assert_eq!(parked.len(), 1, "the buggy message ends parked after its retries");
    let reason = crate::support::header(&parked[0], pvefleet_contracts::headers::fault::MESSAGE).unwrap_or_default();
    assert!(reason.contains("left its transaction failed"), "{reason}");
    assert_eq!(
        count(&client, "SELECT count(*) FROM effects").await?,
        4,
        "the four good messages committed, once each"
    );
    assert_eq!(count(&client, "SELECT count(DISTINCT hostname) FROM effects").await?, 4);
    assert_eq!(
        count(&client, "SELECT count(*) FROM inbox").await?,
        4,
        "no claim for the message that never succeeded"
    );
    assert_eq!(queue_len(&vhost, TEST_QUEUE).await?, 0);
    Ok(())
}

#[tokio::test]
async fn inbox_workers_prune_rows_past_the_retention() -> anyhow::Result<()> {
    init_tracing();
    let vhost = TestVhost::new()?;
    let tdb = TestDb::create().await?;
    let s = settings(&vhost, Some(&tdb));
    let pool = db::connect(&s.db).await?;
    db::migrate(&pool).await?;
    let client = tdb.client().await?;
    client
        .batch_execute(
            "INSERT INTO inbox (consumer, message_id, received_at) VALUES
               ('w', 'old', now() - interval '8 days'), ('w', 'recent', now() - interval '1 day')",
        )
        .await?;
    let _publisher = publisher(&s).await?;
    let worker = start_worker(&s, Router::new().command(RecordsEffect), Some(pool.clone()), true);
    let pruned = eventually(LONG, || async {
        let n = count(&client, "SELECT count(*) FROM inbox WHERE message_id = 'old'")
            .await
            .ok()?;
        (n == 0).then_some(())
    })
    .await;
    worker.stop().await?;
    assert!(pruned.is_some(), "the 8-day-old row is pruned (retention 7 days)");
    assert_eq!(
        count(&client, "SELECT count(*) FROM inbox WHERE message_id = 'recent'").await?,
        1,
        "the recent one stays"
    );
    Ok(())
}

#[tokio::test]
async fn database_errors_are_classified_by_what_they_mean() -> anyhow::Result<()> {
    use pvefleet_core::db::fault::{FaultKind, classify_any};
    init_tracing();
    let vhost = TestVhost::new()?;
    let tdb = TestDb::create().await?;
    let s = settings(&vhost, Some(&tdb));
    let pool = db::connect(&s.db).await?;
    let c = pool.get().await?;
    c.batch_execute("CREATE TABLE t (k TEXT PRIMARY KEY, short VARCHAR(3))")
        .await?;
    let kind = |e: tokio_postgres::Error| {
        let f = classify_any(&anyhow::Error::from(e)).expect("a database error");
        (f.kind, f.code)
    };
    // A NUL, a value too long, a value of the wrong form: the input's fault.
    let nul = c.query_one("SELECT $1::text", &[&"a\0b"]).await.unwrap_err();
    assert_eq!(kind(nul).0, FaultKind::InvalidInput);
    let long = c
        .execute("INSERT INTO t (k, short) VALUES ('a', $1)", &[&"toolong"])
        .await
        .unwrap_err();
    assert_eq!(kind(long), (FaultKind::InvalidInput, Some("22001".to_string())));
    let form = c.query_one("SELECT 'x'::uuid", &[]).await.unwrap_err();
    assert_eq!(kind(form).0, FaultKind::InvalidInput);
    // A constraint: a conflict. A statement of ours that is wrong: a bug.
    c.execute("INSERT INTO t (k) VALUES ('dup')", &[]).await?;
    let dup = c.execute("INSERT INTO t (k) VALUES ('dup')", &[]).await.unwrap_err();
    assert_eq!(kind(dup), (FaultKind::Conflict, Some("23505".to_string())));
    let bug = c.query_one("SELECT nosuchcolumn FROM t", &[]).await.unwrap_err();
    assert_eq!(kind(bug).0, FaultKind::Bug);
    // The server ending our session: an outage.
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let killer = tdb.client().await?;
    killer.execute("SELECT pg_terminate_backend($1)", &[&pid]).await?;
    let gone = c.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(kind(gone).0, FaultKind::Outage);
    Ok(())
}
