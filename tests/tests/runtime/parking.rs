//! Retry through the wait tiers, then park; reject and garbage park at once with a reason.

use std::time::Duration;

use pvefleet_contracts::headers;
use pvefleet_contracts::routing::PARKED_QUEUE;
use pvefleet_core::bus::envelope::Properties;
use pvefleet_core::bus::{HandlerError, Router};
use pvefleet_testkit::broker::{publish_raw, take};

use pvefleet_tests::{Scripted, TEST_QUEUE};

use crate::support::*;

#[tokio::test]
async fn retry_walks_every_wait_tier_then_parks_with_fault_headers_and_the_original_body() -> anyhow::Result<()> {
    let Rig {
        vhost,
        settings: s,
        publisher,
    } = rig().await?;
    let handler = Scripted::new(|_, _| Err(HandlerError::transient("proxmox answered 596")));
    let worker = start_worker(&s, Router::new().command(handler.clone()), None, false);

    let msg = command("retry-me");
    publisher.publish(&msg).await?;

    let ch = vhost.probe().await?;
    let parked = take(&ch, PARKED_QUEUE, 1, LONG).await?;
    worker.stop().await?;
    assert_eq!(parked.len(), 1, "the message must end in the parked queue");
    let p = &parked[0];

    let calls = handler.calls();
    let attempts: Vec<u32> = calls.iter().map(|c| c.attempt).collect();
    assert_eq!(
        attempts,
        vec![1, 2, 3, 4],
        "each attempt is seen once, with the attempt header incremented"
    );
    // Attempt n+1 comes after tier n: 300 ms, 600 ms, 900 ms.
    for (i, tier) in s.bus.retry_tiers.iter().enumerate() {
        let gap = calls[i + 1].at - calls[i].at;
        assert!(
            gap >= *tier,
            "attempt {} came {gap:?} after the previous one, before its {tier:?} tier",
            i + 2
        );
        assert!(gap < *tier + Duration::from_secs(5), "attempt {} waited {gap:?}", i + 2);
    }
    assert!(
        calls.iter().all(|c| c.message_id == calls[0].message_id),
        "the message id is kept across retries"
    );

    assert_eq!(p.body, msg.body.to_vec(), "the parked body is byte-identical");
    assert_eq!(p.properties.message_id, msg.properties.message_id);
    assert_eq!(p.properties.kind, msg.properties.kind);
    assert_eq!(p.properties.correlation_id, msg.properties.correlation_id);
    assert_eq!(header(p, headers::fault::CLASS).as_deref(), Some("retries-exhausted"));
    assert_eq!(header(p, headers::fault::ATTEMPTS).as_deref(), Some("4"));
    assert!(
        header(p, headers::fault::MESSAGE)
            .unwrap_or_default()
            .contains("proxmox answered 596")
    );
    assert_eq!(header(p, headers::fault::ORIGIN_QUEUE).as_deref(), Some(TEST_QUEUE));
    assert_eq!(
        header(p, headers::fault::ORIGIN_EXCHANGE).as_deref(),
        Some("pvefleet.commands")
    );
    assert_eq!(
        header(p, headers::fault::ORIGIN_ROUTING_KEY).as_deref(),
        Some("container.create")
    );
    let first = header(p, headers::fault::FIRST_FAILURE).unwrap_or_default();
    let last = header(p, headers::fault::LAST_FAILURE).unwrap_or_default();
    assert!(
        !first.is_empty() && first < last,
        "first failure {first} precedes last failure {last}"
    );
    assert_eq!(
        header(p, headers::TRACEPARENT),
        msg.properties.header_str(headers::TRACEPARENT)
    );
    assert_eq!(
        queue_len(&vhost, TEST_QUEUE).await?,
        0,
        "nothing is left behind in the work queue"
    );
    Ok(())
}

/// One bad input: how it is published, and a word its park reason must contain.
struct Garbage {
    label: &'static str,
    props: Properties,
    body: Vec<u8>,
    class: &'static str,
    reason_has: &'static str,
}

fn props(kind: &str, content_type: &str) -> Properties {
    Properties {
        message_id: Some(uuid::Uuid::now_v7().to_string()),
        kind: Some(kind.into()),
        content_type: Some(content_type.into()),
        delivery_mode: Some(2),
        ..Properties::default()
    }
}

#[tokio::test]
async fn reject_and_garbage_park_at_once_with_a_reason_while_valid_messages_keep_flowing() -> anyhow::Result<()> {
    let Rig {
        vhost,
        settings: s,
        publisher: _publisher,
    } = rig().await?;
    let handler = Scripted::new(|msg, _| {
        if msg.hostname == "reject-me" {
            Err(HandlerError::rejected("hostname 'reject-me' is refused by policy"))
        } else {
            Ok(())
        }
    });
    let worker = start_worker(&s, Router::new().command(handler.clone()), None, false);

    let valid = |host: &str| command(host);
    let json = "application/json";
    let cases = vec![
        Garbage {
            label: "empty",
            props: props("container.create", json),
            body: vec![],
            class: "decode",
            reason_has: "body is empty",
        },
        Garbage {
            label: "10 MB",
            props: props("container.create", json),
            body: vec![b'a'; 10 * 1024 * 1024],
            class: "too-large",
            reason_has: "10485760 bytes",
        },
        Garbage {
            label: "invalid UTF-8",
            props: props("container.create", json),
            body: b"{\"hostname\": \"\xff\xfe\"}".to_vec(),
            class: "decode",
            reason_has: "not valid UTF-8",
        },
        Garbage {
            label: "wrong content type",
            props: props("container.create", "text/plain"),
            body: valid("x").body.to_vec(),
            class: "content-type",
            reason_has: "text/plain",
        },
        Garbage {
            label: "no content type",
            props: Properties {
                message_id: Some("m-1".into()),
                kind: Some("container.create".into()),
                ..Properties::default()
            },
            body: valid("x").body.to_vec(),
            class: "content-type",
            reason_has: "no content_type",
        },
        Garbage {
            label: "unknown type",
            props: props("container.explode", json),
            body: b"{}".to_vec(),
            class: "unknown-type",
            reason_has: "container.explode",
        },
        Garbage {
            label: "no type",
            props: Properties {
                message_id: Some("m-2".into()),
                content_type: Some(json.into()),
                ..Properties::default()
            },
            body: b"{}".to_vec(),
            class: "unknown-type",
            reason_has: "no type",
        },
        Garbage {
            label: "not JSON",
            props: props("container.create", json),
            body: b"vmid=123".to_vec(),
            class: "decode",
            reason_has: "not JSON",
        },
        Garbage {
            label: "schema-invalid",
            props: props("container.create", json),
            body: br#"{"site_id": "01930c5e-7a10-7000-8000-000000000001", "vmid": 5}"#.to_vec(),
            class: "invalid",
            reason_has: "is a required property",
        },
        Garbage {
            label: "vmid out of range",
            props: props("container.create", json),
            body: {
                let mut v: serde_json::Value = serde_json::from_slice(&valid("x").body)?;
                v["vmid"] = 5.into();
                serde_json::to_vec(&v)?
            },
            class: "invalid",
            reason_has: "/vmid",
        },
        Garbage {
            label: "handler reject",
            props: valid("reject-me").properties,
            body: valid("reject-me").body.to_vec(),
            class: "rejected",
            reason_has: "refused by policy",
        },
    ];

    let ch = vhost.probe().await?;
    let first = valid("before-garbage");
    publish_raw(&ch, "", TEST_QUEUE, first.properties.clone(), &first.body).await?;
    for c in &cases {
        publish_raw(&ch, "", TEST_QUEUE, c.props.clone(), &c.body).await?;
    }
    let last = valid("after-garbage");
    publish_raw(&ch, "", TEST_QUEUE, last.properties.clone(), &last.body).await?;

    let parked = take(&ch, PARKED_QUEUE, cases.len(), LONG).await?;
    let handled = pvefleet_testkit::eventually(LONG, || async {
        let hosts: Vec<String> = handler.calls().into_iter().map(|c| c.hostname).collect();
        hosts.contains(&"after-garbage".to_string()).then_some(hosts)
    })
    .await;
    worker.stop().await?;

    assert_eq!(parked.len(), cases.len(), "every bad message is parked, none lost");
    for c in &cases {
        let p = parked
            .iter()
            .find(|p| p.properties.message_id == c.props.message_id)
            .unwrap_or_else(|| panic!("{} was not parked", c.label));
        let class = header(p, headers::fault::CLASS).unwrap_or_default();
        let reason = header(p, headers::fault::MESSAGE).unwrap_or_default();
        assert_eq!(class, c.class, "{}: class (reason: {reason})", c.label);
        assert!(
            reason.contains(c.reason_has),
            "{}: reason '{reason}' should mention '{}'",
            c.label,
            c.reason_has
        );
        assert_eq!(p.body, c.body, "{}: parked body is byte-identical", c.label);
        assert_eq!(
            header(p, headers::fault::ATTEMPTS).as_deref(),
            Some("1"),
            "{}: parked at once",
            c.label
        );
    }
    let hosts = handled.expect("the message after the garbage is handled");
    assert!(hosts.contains(&"before-garbage".to_string()));
    assert!(
        !hosts.iter().any(|h| h == "x"),
        "invalid messages never reach the handler"
    );
    assert_eq!(queue_len(&vhost, TEST_QUEUE).await?, 0);
    Ok(())
}
