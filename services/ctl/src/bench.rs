//! `pvefleet bench bus`: the raw broker ceiling (plain lapin) against the runtime's publisher
//! and consumer runner, inbox off and on, measured in one run on one machine.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use pvefleet_contracts::Message;
use pvefleet_contracts::messages::ContainerCreate;
use pvefleet_core::Settings;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
use pvefleet_core::bus::{Context, Handled, Handler, Outgoing, Publisher, Router, Topology, connect};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const RAW_QUEUE: &str = "pvefleet.bench.raw";
const RUNTIME_QUEUE: &str = "pvefleet.bench.runtime";
const BODY_BYTES: usize = 512;

pub(crate) struct Rates {
    pub(crate) publish: f64,
    pub(crate) consume: f64,
}

pub async fn bus(
    settings: &Settings,
    n: usize,
    window: u16,
    rounds: usize,
    inbox_connections: u16,
) -> anyhow::Result<ExitCode> {
    let mut bus = settings.bus.clone();
    bus.confirm_window = usize::from(window);
    let rounds = rounds.max(1);
    eprintln!(
        "Benchmarking {n} messages of {BODY_BYTES} bytes per phase, window/prefetch {window}, {rounds} interleaved rounds, on {}.",
        bus.url.redacted()
    );
    let (mut raws, mut offs, mut ons) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Interleaved, so a slow spell of the machine hits every phase alike.
        let raw = raw(&bus, n, window).await?;
        let off = runtime(settings, &bus, n, window, None).await?;
        let on = runtime(settings, &bus, n, window, Some(inbox_connections)).await?;
        eprintln!(
            "round {round}: raw {:.0}/{:.0}  inbox off {:.0}/{:.0}  inbox on {:.0}/{:.0} msg/s (publish/consume)",
            raw.publish, raw.consume, off.publish, off.consume, on.publish, on.consume
        );
        raws.push(raw);
        offs.push(off);
        ons.push(on);
    }
    let (raw, off, on) = (median(&raws), median(&offs), median(&ons));
    println!(
        "Medians of {rounds} rounds, {n} messages of {BODY_BYTES} bytes per phase, window/prefetch {window}, inbox on with {inbox_connections} connections."
    );
    println!();
    println!("| phase | raw lapin msg/s | runtime, inbox off msg/s | ratio | runtime, inbox on msg/s | ratio |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, r, o, i) in [
        ("publish, confirmed", raw.publish, off.publish, on.publish),
        ("consume, acked", raw.consume, off.consume, on.consume),
    ] {
        println!("| {name} | {r:.0} | {o:.0} | {:.2} | {i:.0} | {:.2} |", o / r, i / r);
    }
    Ok(ExitCode::SUCCESS)
}

fn median(rates: &[Rates]) -> Rates {
    let pick = |f: fn(&Rates) -> f64| {
        let mut v: Vec<f64> = rates.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Rates {
        publish: pick(|r| r.publish),
        consume: pick(|r| r.consume),
    }
}

fn padded_command(i: usize) -> ContainerCreate {
    let mut c = ContainerCreate::example();
    c.hostname = format!("bench-{i}");
    let base = serde_json::to_vec(&c).map(|v| v.len()).unwrap_or(0);
    // Pad through a tag so the body is BODY_BYTES long, as in the raw phase.
    c.tags.push("x".repeat(BODY_BYTES.saturating_sub(base + 4)));
    c
}

fn quorum_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    t
}

pub(crate) async fn raw(bus: &pvefleet_core::config::BusSettings, n: usize, window: u16) -> anyhow::Result<Rates> {
    let (pconn, pch) = connect::open(bus, "bench-raw-publisher").await?;
    let _ = pch.queue_delete(RAW_QUEUE.into(), QueueDeleteOptions::default()).await;
    pch.queue_declare(
        RAW_QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum_args(),
    )
    .await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; BODY_BYTES];
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());

    // Plain lapin with a window: up to `window` publishes awaiting their confirm at once.
    let started = Instant::now();
    let results: Vec<Result<lapin::Confirmation, lapin::Error>> = futures::stream::iter(0..n)
        .map(|_| {
            let (ch, body, props) = (&pch, &body, props.clone());
            async move {
                ch.basic_publish("".into(), RAW_QUEUE.into(), BasicPublishOptions::default(), body, props)
                    .await?
                    .await
            }
        })
        .buffer_unordered(usize::from(window))
        .collect()
        .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        anyhow::bail!("raw publish failed: {e}");
    }
    let publish = n as f64 / started.elapsed().as_secs_f64();

    let (cconn, cch) = connect::open(bus, "bench-raw-consumer").await?;
    cch.basic_qos(window, BasicQosOptions::default()).await?;
    let mut consumer = cch
        .basic_consume(
            RAW_QUEUE.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Acks go out concurrently, up to the prefetch, as the runner's do.
    let started = Instant::now();
    let acked = AtomicUsize::new(0);
    let stream = (&mut consumer).take(n);
    tokio::time::timeout(
        Duration::from_secs(300),
        stream.for_each_concurrent(usize::from(window), |d| {
            let acked = &acked;
            async move {
                if let Ok(d) = d
                    && d.acker.ack(BasicAckOptions::default()).await.is_ok()
                {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }),
    )
    .await
    .map_err(|_| anyhow::anyhow!("raw consume stalled after {} messages", acked.load(Ordering::Relaxed)))?;
    anyhow::ensure!(
        acked.load(Ordering::Relaxed) == n,
        "raw consume acked {} of {n}",
        acked.load(Ordering::Relaxed)
    );
    let consume = n as f64 / started.elapsed().as_secs_f64();
    let _ = pch.queue_delete(RAW_QUEUE.into(), QueueDeleteOptions::default()).await;
    let _ = cconn.close(200, "done".into()).await;
    let _ = pconn.close(200, "done".into()).await;
    Ok(Rates { publish, consume })
}

struct Count {
    seen: AtomicUsize,
    target: usize,
    done: Notify,
}

struct CountHandler(Arc<Count>);

#[async_trait]
impl Handler<ContainerCreate> for CountHandler {
    async fn handle(&self, _msg: ContainerCreate, _ctx: &Context<'_>) -> Handled {
        if self.0.seen.fetch_add(1, Ordering::SeqCst) + 1 >= self.0.target {
            self.0.done.notify_one();
        }
        Ok(())
    }
}

async fn runtime(
    settings: &Settings,
    bus: &pvefleet_core::config::BusSettings,
    n: usize,
    concurrency: u16,
    inbox: Option<u16>,
) -> anyhow::Result<Rates> {
    let topology = Topology::base(bus).with_queue(RUNTIME_QUEUE, &[]);
    let publisher = Publisher::new(bus, "bench-publisher", Some(topology.clone()));
    publisher.connect().await?;
    let origin = Origin {
        app_id: Some("bench".into()),
        ..Origin::default()
    };
    let mut messages = Vec::with_capacity(n);
    for i in 0..n {
        let mut m = Outgoing::message(&padded_command(i), &origin)?;
        // Straight to the bench queue, so no fleet queue bound to the type receives copies.
        m.exchange = String::new();
        m.routing_key = RUNTIME_QUEUE.into();
        messages.push(m);
    }
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(messages.iter().map(|m| publisher.publish(m)))
        .buffer_unordered(bus.confirm_window)
        .collect()
        .await;
    let publish = n as f64 / started.elapsed().as_secs_f64();
    if let Some(e) = results.into_iter().find_map(Result::err) {
        anyhow::bail!("runtime publish failed: {e}");
    }

    let db = if let Some(connections) = inbox {
        let mut db = settings.db.clone();
        db.pool_size = usize::from(connections);
        let pool = pvefleet_core::db::connect(&db).await?;
        pvefleet_core::db::migrate(&pool).await?;
        Some(pool)
    } else {
        None
    };
    let count = Arc::new(Count {
        seen: AtomicUsize::new(0),
        target: n,
        done: Notify::new(),
    });
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut spec = WorkerSpec::from_settings(&name, RUNTIME_QUEUE, settings);
    spec.concurrency = concurrency;
    spec.inbox = inbox.is_some();
    spec.inbox_connections = inbox.unwrap_or(1);
    let deps = WorkerDeps {
        bus: bus.clone(),
        topology,
        publisher: publisher.clone(),
        db: db.clone(),
        ready: None,
    };
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(run_worker(
        deps,
        Router::new().command(CountHandler(count.clone())),
        spec,
        shutdown.clone(),
    ));
    if tokio::time::timeout(Duration::from_secs(300), count.done.notified())
        .await
        .is_err()
    {
        anyhow::bail!(
            "runtime consume stalled after {} messages",
            count.seen.load(Ordering::SeqCst)
        );
    }
    let consume = n as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await??;
    if let Some(pool) = db {
        let c = pool.get().await?;
        c.execute("DELETE FROM inbox WHERE consumer = $1", &[&name]).await?;
    }
    if let Ok((conn, ch)) = connect::open(bus, "bench-cleanup").await {
        let _ = ch
            .queue_delete(RUNTIME_QUEUE.into(), QueueDeleteOptions::default())
            .await;
        let _ = conn.close(200, "done".into()).await;
    }
    publisher.close().await;
    Ok(Rates { publish, consume })
}
