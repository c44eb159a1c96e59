//! Handler outcomes that emit messages, trace continuity, and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pvefleet_contracts::messages::{ContainerCreate, ContainerCreateFailed, ContainerCreated};
use pvefleet_contracts::routing::EVENTS_EXCHANGE;
use pvefleet_contracts::{Message, TraceContext, headers};
use pvefleet_core::bus::probe::Probe;
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError, Router};
use pvefleet_testkit::broker::{take, temp_queue};
use pvefleet_testkit::{TestVhost, eventually};
use pvefleet_tests::{Scripted, TEST_QUEUE};

use crate::support::*;

async fn capture_events(vhost: &TestVhost, key: &str) -> anyhow::Result<(Probe, String)> {
    let ch = vhost.probe().await?;
    let q = temp_queue(&ch).await?;
    ch.bind(&q, EVENTS_EXCHANGE, key).await?;
    Ok((ch, q))
}

#[tokio::test]
async fn fail_emits_the_commands_failed_event_with_the_same_correlation_and_acks() -> anyhow::Result<()> {
    let Rig {
        vhost,
        settings: s,
        publisher,
    } = rig().await?;
    let (ch, q) = capture_events(&vhost, ContainerCreateFailed::TYPE).await?;
    let handler = Scripted::new(|_, _| Err(HandlerError::fail("quota", "owner alice has no cores left")));
    let worker = start_worker(&s, Router::new().command(handler.clone()), None, false);

    let msg = command("fails");
    publisher.publish(&msg).await?;
    let events = take(&ch, &q, 1, LONG).await?;
    worker.stop().await?;
    assert_eq!(events.len(), 1, "one failure event");
    let e = &events[0];
    assert_eq!(e.properties.kind.as_deref(), Some("container.create_failed"));
    assert_eq!(e.properties.correlation_id, msg.properties.correlation_id);
    assert_eq!(header(e, headers::CAUSATION_ID).as_deref(), msg.message_id());
    let body: ContainerCreateFailed = serde_json::from_slice(&e.body)?;
    assert_eq!(body.error.code, "quota");
    assert_eq!(body.vmid, Some(ContainerCreate::example().vmid));
    assert_eq!(handler.calls().len(), 1, "a definitive failure is not retried");
    assert_eq!(queue_len(&vhost, TEST_QUEUE).await?, 0, "and the command is acked");
    Ok(())
}

struct Replies;

#[async_trait]
impl Handler<ContainerCreate> for Replies {
    async fn handle(&self, msg: ContainerCreate, ctx: &Context<'_>) -> Handled {
        let created = ContainerCreated {
            site_id: msg.site_id,
            vmid: msg.vmid,
            node: msg.node,
        };
        match ctx.send(&created).await {
            Ok(()) => Ok(()),
            Err(e) => Err(HandlerError::transient(e)),
        }
    }
}

#[tokio::test]
async fn messages_a_handler_sends_continue_the_trace_and_name_their_cause() -> anyhow::Result<()> {
    let Rig {
        vhost,
        settings: s,
        publisher,
    } = rig().await?;
    let (ch, q) = capture_events(&vhost, ContainerCreated::TYPE).await?;
    let worker = start_worker(&s, Router::new().command(Replies), None, false);

    let msg = command("replies");
    publisher.publish(&msg).await?;
    let events = take(&ch, &q, 1, LONG).await?;
    worker.stop().await?;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    let parent = TraceContext::parse(&header(e, headers::TRACEPARENT).unwrap_or_default()).expect("a traceparent");
    let origin = TraceContext::parse(&msg.properties.header_str(headers::TRACEPARENT).unwrap_or_default())
        .expect("the command had one");
    assert_eq!(parent.trace_id, origin.trace_id, "same trace");
    assert_ne!(parent.span_id, origin.span_id, "new span");
    assert_eq!(e.properties.correlation_id, msg.properties.correlation_id);
    assert_eq!(header(e, headers::CAUSATION_ID).as_deref(), msg.message_id());
    assert_eq!(e.properties.app_id.as_deref(), Some("test-worker"));
    assert_eq!(e.properties.delivery_mode, Some(2));
    assert_eq!(header(e, headers::SCHEMA_VERSION).as_deref(), Some("1"));
    Ok(())
}

struct Slow {
    started: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
}

#[async_trait]
impl Handler<ContainerCreate> for Slow {
    async fn handle(&self, _msg: ContainerCreate, _ctx: &Context<'_>) -> Handled {
        self.started.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_stops_intake_and_drains_the_handler_in_flight_before_closing() -> anyhow::Result<()> {
    let Rig {
        vhost,
        settings: s,
        publisher,
    } = rig().await?;
    let started = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let slow = Slow {
        started: started.clone(),
        finished: finished.clone(),
    };
    let worker = start_worker(&s, Router::new().command(slow), None, false);
    publisher.publish(&command("in-flight")).await?;
    eventually(LONG, || async { started.load(Ordering::SeqCst).then_some(()) })
        .await
        .expect("handler started");
    // Published after shutdown begins: must stay in the queue for the next worker.
    worker.shutdown.cancel();
    publisher.publish(&command("after-shutdown")).await?;
    worker.task.await??;
    assert!(
        finished.load(Ordering::SeqCst),
        "the in-flight handler finished before the worker returned"
    );
    assert_eq!(
        queue_len(&vhost, TEST_QUEUE).await?,
        1,
        "the in-flight message was acked; the later one waits"
    );
    Ok(())
}
