//! The publisher: unroutable commands, black-holed and unreachable brokers.

use std::time::{Duration, Instant};

use pvefleet_core::bus::{PublishError, Publisher};
use pvefleet_testkit::broker::amqp_addr;
use pvefleet_testkit::{PausableProxy, TestVhost, init_tracing, settings};

use crate::support::*;

#[tokio::test]
async fn an_unroutable_mandatory_command_returns_an_error_to_the_caller() -> anyhow::Result<()> {
    init_tracing();
    let vhost = TestVhost::new()?;
    let s = settings(&vhost, None);
    // The base topology has the exchanges but no work queue bound to container.create.
    let unbound = Publisher::new(&s.bus, "test", Some(pvefleet_core::bus::Topology::base(&s.bus)));
    let err = unbound
        .publish(&command("nobody-listens"))
        .await
        .expect_err("unroutable must fail");
    match &err {
        PublishError::Unroutable {
            reply_code,
            routing_key,
            ..
        } => {
            assert_eq!(*reply_code, 312);
            assert_eq!(routing_key, "container.create");
        }
        other => panic!("expected Unroutable, got {other:?}"),
    }
    assert!(!err.is_transient());
    // The same publisher keeps working once a queue is bound.
    let publisher = publisher(&s).await?;
    publisher.publish(&command("now-routable")).await?;
    Ok(())
}

#[tokio::test]
async fn a_publish_to_a_black_holed_broker_times_out_and_recovers_when_it_answers_again() -> anyhow::Result<()> {
    init_tracing();
    let vhost = TestVhost::new()?;
    let proxy = PausableProxy::start(&amqp_addr()).await?;
    let mut s = settings(&vhost, None);
    s.bus.url = pvefleet_core::Secret::new(vhost.url_via(proxy.addr()));
    s.bus.publish_timeout = Duration::from_millis(1500);
    s.bus.connect_timeout = Duration::from_millis(1000);
    let publisher = publisher(&s).await?;
    publisher.publish(&command("before")).await?;

    proxy.pause();
    let started = Instant::now();
    let err = publisher
        .publish(&command("during"))
        .await
        .expect_err("a stalled broker must not hang the publish");
    let took = started.elapsed();
    assert!(
        matches!(err, PublishError::Timeout { .. }),
        "expected Timeout, got {err:?}"
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "timed out after {took:?}"
    );
    assert!(err.is_transient());

    // While still paused, a reconnect attempt also ends in time.
    let started = Instant::now();
    let err = publisher
        .publish(&command("still-during"))
        .await
        .expect_err("still stalled");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{err:?} took {:?}",
        started.elapsed()
    );

    proxy.resume();
    publisher
        .publish_reliably(&command("after"), Duration::from_secs(20))
        .await?;
    assert!(
        queue_len(&vhost, pvefleet_tests::TEST_QUEUE).await? >= 2,
        "before and after both arrived"
    );
    Ok(())
}

#[tokio::test]
async fn a_publish_to_an_unreachable_broker_fails_in_time() -> anyhow::Result<()> {
    init_tracing();
    let vhost = TestVhost::new()?;
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut s = settings(&vhost, None);
    s.bus.url = pvefleet_core::Secret::new(vhost.url_via(&format!("127.0.0.1:{port}")));
    s.bus.publish_timeout = Duration::from_secs(2);
    let publisher = Publisher::new(&s.bus, "test", None);
    let started = Instant::now();
    let err = publisher
        .publish(&command("nowhere"))
        .await
        .expect_err("nothing listens");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, PublishError::Connect(_) | PublishError::Timeout { .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    Ok(())
}
