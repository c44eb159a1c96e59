//! Traces end to end: `pvefleet dev` with `telemetry.otlp_endpoint` set exports its spans over
//! OTLP/HTTP to a receiver here that decodes the official protobuf
//! (`ExportTraceServiceRequest`, opentelemetry-proto); one provisioning saga with HA is one
//! trace whose spans come from intake, the saga coordinator, the provisioner and ha, each
//! parented through the bus (`traceparent`) up to intake's root span, which names the saga and
//! the site.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

mod common;

use common::{Dev, text};

/// An OTLP/HTTP receiver: every span of every `POST /v1/traces` it was sent, decoded.
fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let got = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let got = got.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP trace request");
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        got.lock().unwrap().extend(ss.spans);
                    }
                }
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            });
        }
    });
    (url, spans)
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(AnyValue::StringValue(s)) => Some(s.clone()),
            Some(AnyValue::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn one_provisioning_saga_is_one_trace_across_intake_saga_provisioner_and_ha() {
    let (endpoint, spans) = receiver();
    let mut dev = Dev::start(&[("PVEFLEET_TELEMETRY__OTLP_ENDPOINT", &endpoint)]).await;
    let api = dev.api.clone();
    let out = dev
        .cli(&[
            "site", "create", "shop", "--ha", "--app", "none", "--wait", "--api", &api,
        ])
        .await;
    // Stopped, dev exports what it has not yet.
    dev.stop().await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));

    // The saga's root: intake's span, naming the saga and the site.
    let deadline = Instant::now() + Duration::from_secs(30);
    let root = loop {
        let found = spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| {
                attr(s, "service").as_deref() == Some("intake")
                    && attr(s, "message_type").as_deref() == Some("site.provision")
            })
            .cloned();
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "intake's root span was exported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(root.parent_span_id.is_empty(), "intake's span is the root");
    let saga_id = attr(&root, "saga_id").expect("the root names the saga");
    assert!(uuid::Uuid::parse_str(&saga_id).is_ok(), "{saga_id}");
    assert!(
        attr(&root, "site").is_some_and(|s| s.ends_with(" shop")),
        "the root names the site: {:?}",
        attr(&root, "site")
    );

    let all = spans.lock().unwrap().clone();
    let trace: Vec<&Span> = all.iter().filter(|s| s.trace_id == root.trace_id).collect();
    let ids: HashSet<&[u8]> = trace.iter().map(|s| s.span_id.as_slice()).collect();
    // Every span of the trace hangs from another of it, up to the one root.
    let roots: Vec<&&Span> = trace.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root");
    for s in &trace {
        assert!(
            s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_slice()),
            "span {} ({:?}) has a parent in the trace",
            s.name,
            attr(s, "service")
        );
    }
    let mut by_service: HashMap<String, usize> = HashMap::new();
    for s in &trace {
        if let Some(svc) = attr(s, "service") {
            *by_service.entry(svc).or_default() += 1;
        }
    }
    eprintln!(
        "spans in the trace by service: {by_service:?}; {} spans in all",
        all.len()
    );
    for svc in ["intake", "saga", "provisioner", "ha"] {
        assert!(
            by_service.contains_key(svc),
            "spans of {svc} in the saga's trace: {by_service:?}"
        );
    }
    // The provisioner's create is a child of a saga span (the command it sent), not a root.
    let by_id: HashMap<&[u8], &&Span> = trace.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let create = trace
        .iter()
        .find(|s| attr(s, "message_type").as_deref() == Some("container.create"))
        .expect("the provisioner's container.create span");
    let parent = by_id[create.parent_span_id.as_slice()];
    assert_eq!(attr(parent, "service").as_deref(), Some("saga"), "sent by the saga");
    // Another saga in the same run is another trace.
    let traces: HashSet<&[u8]> = all
        .iter()
        .filter(|s| attr(s, "service").as_deref() == Some("intake"))
        .map(|s| s.trace_id.as_slice())
        .collect();
    assert_eq!(traces.len(), 1, "one saga, one trace");
}
