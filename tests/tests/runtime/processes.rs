//! Worker processes that die: killed mid-handler, or crashing on every delivery.

use std::time::Duration;

use pvefleet_contracts::routing::PARKED_QUEUE;
use pvefleet_core::bus::Router;
use pvefleet_testkit::broker::take;
use pvefleet_testkit::eventually;
use pvefleet_tests::{Scripted, TEST_QUEUE};

use crate::support::*;

#[tokio::test]
async fn a_worker_killed_mid_handler_gets_its_message_redelivered() -> anyhow::Result<()> {
    let Rig {
        vhost,
        settings: s,
        publisher,
    } = rig().await?;
    let config = child_config(&s)?;
    let marker = marker_path();
    let mut child = chaos_worker(&config, &["hang", marker.to_str().unwrap_or_default()])?;

    let msg = command("killed-mid-handler");
    publisher.publish(&msg).await?;
    let started = eventually(LONG, || async { std::fs::read_to_string(&marker).ok() }).await;
    assert_eq!(
        started.as_deref(),
        Some("killed-mid-handler"),
        "the child process started handling the message"
    );

    child.kill()?; // SIGKILL: no drain, no ack
    child.wait()?;

    let handler = Scripted::new(|_, _| Ok(()));
    let worker = start_worker(&s, Router::new().command(handler.clone()), None, false);
    let seen = eventually(LONG, || async { handler.calls().into_iter().next() }).await;
    worker.stop().await?;
    let seen = seen.expect("the message is redelivered to the next worker");
    assert_eq!(Some(seen.message_id.as_str()), msg.message_id());
    assert!(seen.redelivered, "the broker marks it redelivered");
    assert_eq!(
        seen.attempt, 1,
        "a crash is not a handler retry; the attempt header is unchanged"
    );
    assert_eq!(queue_len(&vhost, TEST_QUEUE).await?, 0);
    let _ = std::fs::remove_file(marker);
    Ok(())
}

#[tokio::test]
async fn a_handler_that_crashes_on_every_delivery_ends_in_parked_through_the_delivery_limit() -> anyhow::Result<()> {
    let Rig {
        vhost,
        settings: s,
        publisher,
    } = rig().await?;
    let config = child_config(&s)?;
    let msg = command("poison");
    publisher.publish(&msg).await?;

    let ch = vhost.probe().await?;
    async fn parked_len(ch: &pvefleet_core::bus::probe::Probe) -> u32 {
        ch.queue_len(PARKED_QUEUE).await.ok().flatten().unwrap_or(0)
    }
    // Each run of the worker takes the message and dies. The broker counts the returns and,
    // past x-delivery-limit, dead-letters it to pvefleet.parked. It must never loop forever.
    let limit = s.bus.delivery_limit as usize;
    let mut runs = 0;
    while parked_len(&ch).await == 0 {
        runs += 1;
        assert!(
            runs <= limit + 3,
            "still not parked after {runs} crashing runs; the message loops"
        );
        let mut child = chaos_worker(&config, &["abort", "/dev/null"])?;
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        assert!(!status.success(), "the worker must have crashed");
        // Give the broker a moment to dead-letter (at-least-once, confirmed internally).
        let _ = eventually(Duration::from_secs(2), || async {
            (parked_len(&ch).await > 0).then_some(())
        })
        .await;
    }
    assert!(
        runs >= limit,
        "parked after {runs} runs, before the delivery limit of {limit} was spent"
    );
    let parked = take(&ch, PARKED_QUEUE, 1, LONG).await?;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].body, msg.body.to_vec(), "byte-identical");
    assert_eq!(
        header(&parked[0], "x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
    assert_eq!(header(&parked[0], "x-first-death-queue").as_deref(), Some(TEST_QUEUE));
    assert_eq!(queue_len(&vhost, TEST_QUEUE).await?, 0);
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_the_handler_in_flight_and_the_process_exits_cleanly() -> anyhow::Result<()> {
    let Rig {
        vhost,
        settings: s,
        publisher,
    } = rig().await?;
    let config = child_config(&s)?;
    let marker = marker_path();
    let child = chaos_worker(&config, &["slow", marker.to_str().unwrap_or_default()])?;
    publisher.publish(&command("drained")).await?;
    eventually(LONG, || async { std::fs::read_to_string(&marker).ok() })
        .await
        .expect("the handler started");

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let started = std::time::Instant::now();
    let mut child = child;
    let exit = tokio::task::spawn_blocking(move || child.wait()).await??;
    assert!(exit.success(), "the worker exits 0 after draining: {exit:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for the handler instead of dying at once"
    );
    assert_eq!(
        queue_len(&vhost, TEST_QUEUE).await?,
        0,
        "the in-flight message was acked, not left for redelivery"
    );
    let _ = std::fs::remove_file(marker);
    Ok(())
}
