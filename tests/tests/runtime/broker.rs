//! Tests that restart or block the whole broker. `.ci/run` runs this module alone (filter `test(/^broker::/)`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pvefleet_contracts::messages::ContainerCreate;
use pvefleet_core::bus::{Context, Handled, Handler, PublishError, Router};
use pvefleet_testkit::{TestVhost, eventually, init_tracing, rabbitmqctl, settings};

use crate::support::*;

struct Collect(Arc<Mutex<HashSet<String>>>);

#[async_trait]
impl Handler<ContainerCreate> for Collect {
    async fn handle(&self, msg: ContainerCreate, _ctx: &Context<'_>) -> Handled {
        if let Ok(mut s) = self.0.lock() {
            s.insert(msg.hostname);
        }
        Ok(())
    }
}

fn restart_broker() -> anyhow::Result<()> {
    rabbitmqctl(&["stop_app"])?;
    std::thread::sleep(Duration::from_secs(3));
    rabbitmqctl(&["start_app"])?;
    rabbitmqctl(&["await_startup"])?;
    Ok(())
}

#[tokio::test]
async fn broker_restarts_mid_stream_lose_nothing_and_publisher_and_consumer_resume() -> anyhow::Result<()> {
    init_tracing();
    const TOTAL: usize = 1000;
    let vhost = TestVhost::new()?;
    let mut s = settings(&vhost, None);
    s.bus.publish_timeout = Duration::from_secs(3);
    s.bus.connect_timeout = Duration::from_secs(3);
    s.bus.heartbeat_secs = 2;
    let publisher = publisher(&s).await?;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let worker = start_worker(&s, Router::new().command(Collect(seen.clone())), None, false);

    // Publish in a steady stream; restart the broker twice while it runs.
    let p = publisher.clone();
    let stream = tokio::spawn(async move {
        let mut retried = 0usize;
        for i in 0..TOTAL {
            let msg = command(&format!("m-{i}"));
            loop {
                match p.publish(&msg).await {
                    Ok(()) => break,
                    // Unknown outcome: publish again (a duplicate at worst).
                    Err(e) if e.is_transient() => {
                        retried += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err::<usize, PublishError>(e),
                }
            }
            // A steady stream (about 200 msg/s), so both restarts land mid-stream.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(retried)
    });
    let count = |seen: &Arc<Mutex<HashSet<String>>>| seen.lock().map(|s| s.len()).unwrap_or(0);
    eventually(LONG, || async { (count(&seen) >= 200).then_some(()) })
        .await
        .expect("consuming before the first restart");
    tokio::task::spawn_blocking(restart_broker).await??;
    eventually(Duration::from_secs(60), || async {
        (count(&seen) >= 500).then_some(())
    })
    .await
    .expect("consuming resumed after the first restart");
    tokio::task::spawn_blocking(restart_broker).await??;

    let retried = tokio::time::timeout(Duration::from_secs(120), stream).await???;
    let all = eventually(Duration::from_secs(60), || async {
        (count(&seen) == TOTAL).then_some(())
    })
    .await;
    worker.stop().await?;
    let got = count(&seen);
    let missing: Vec<usize> = (0..TOTAL)
        .filter(|i| !seen.lock().map(|s| s.contains(&format!("m-{i}"))).unwrap_or(false))
        .collect();
    assert!(all.is_some(), "{got} of {TOTAL} consumed; missing {missing:?}");
    assert!(
        retried > 0,
        "the restarts were felt by the publisher (else the test proved nothing)"
    );
    Ok(())
}

#[tokio::test]
async fn broker_blocked_by_its_memory_alarm_makes_a_publish_time_out() -> anyhow::Result<()> {
    init_tracing();
    let vhost = TestVhost::new()?;
    let mut s = settings(&vhost, None);
    s.bus.publish_timeout = Duration::from_secs(2);
    let publisher = publisher(&s).await?;
    publisher.publish(&command("before")).await?;

    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"])?;
    let started = std::time::Instant::now();
    let res = publisher.publish(&command("blocked")).await;
    let took = started.elapsed();
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"])?;

    let err = res.expect_err("a blocked broker must not accept the publish");
    assert!(matches!(err, PublishError::Timeout { .. }), "{err:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    publisher
        .publish_reliably(&command("after"), Duration::from_secs(30))
        .await?;
    Ok(())
}
