//! The edge service in-process against the real RabbitMQ (its own vhost), a real PowerDNS
//! (sqlite backend, API and DNS on loopback) and a real Caddy (admin API and one HTTP server):
//! each command through the bus, each effect checked where a user would see it, a DNS answer
//! over UDP and an HTTP request through the proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pvefleet_contracts::Message;
use pvefleet_contracts::ids::SiteId;
use pvefleet_contracts::messages::{DnsDelete, DnsUpsert, ProxyDelete, ProxyUpsert, RecordType};
use pvefleet_core::Settings;
use pvefleet_core::bus::Publisher;
use pvefleet_testkit::edge::{Caddy, PowerDns, http_backend};
use pvefleet_testkit::{TestVhost, init_tracing, settings};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const ZONE: &str = "sites.test";

struct Rig {
    _vhost: TestVhost,
    publisher: Publisher,
    events: (pvefleet_core::bus::probe::Probe, String),
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn rig(pdns: &PowerDns, caddy: &Caddy, tune: impl FnOnce(&mut Settings)) -> Rig {
    init_tracing();
    let vhost = TestVhost::new().unwrap();
    let mut s = settings(&vhost, None);
    s.saga.dns_provider = "powerdns".into();
    s.saga.proxy_provider = "caddy".into();
    s.saga.domain = ZONE.into();
    s.edge.powerdns_url = pdns.api_url.clone();
    s.edge.powerdns_api_key = Some(pvefleet_core::Secret::new(pdns.api_key.clone()));
    s.edge.caddy_admin_url = caddy.admin_url.clone();
    s.edge.caddy_server = "edge".into();
    s.bus.max_attempts = 2;
    s.bus.retry_tiers = vec![Duration::from_millis(200)];
    tune(&mut s);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let s = s.clone();
        let shutdown = shutdown.clone();
        async move { pvefleet_edge::run(&s, None, shutdown).await }
    });
    let publisher = pvefleet_testkit::broker::fleet_publisher(&s).await.unwrap();
    let ch = vhost.probe().await.unwrap();
    let q = pvefleet_testkit::broker::event_queue(&ch, &["dns.*", "proxy.*"])
        .await
        .unwrap();
    Rig {
        _vhost: vhost,
        publisher,
        events: (ch, q),
        shutdown,
        task,
    }
}

impl Rig {
    async fn send<M: Message>(&self, msg: &M) {
        pvefleet_testkit::broker::send(&self.publisher, msg).await.unwrap();
    }

    async fn event(&self) -> (String, Value) {
        pvefleet_testkit::broker::next_json(&self.events.0, &self.events.1, WAIT)
            .await
            .unwrap()
            .expect("an event arrives")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn upsert(site: SiteId, fqdn: &str, ip: &str) -> DnsUpsert {
    DnsUpsert {
        site_id: site,
        fqdn: fqdn.into(),
        record_type: RecordType::A,
        content: ip.into(),
        ttl: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_records_are_upserted_once_replaced_and_deleted_on_a_real_powerdns() {
    let (pdns, caddy) = (PowerDns::start(ZONE).await.unwrap(), Caddy::start().await.unwrap());
    let r = rig(&pdns, &caddy, |_| {}).await;
    let site = SiteId::new();
    let fqdn = format!("blog.{ZONE}");
    // Twice: one record.
    for _ in 0..2 {
        r.send(&upsert(site, &fqdn, "10.10.0.100")).await;
        assert_eq!(r.event().await.0, "dns.upserted");
    }
    assert_eq!(
        pdns.query_a(&fqdn).unwrap(),
        vec!["10.10.0.100".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    let ours: Vec<_> = pdns
        .rrsets()
        .await
        .unwrap()
        .into_iter()
        .filter(|(n, t, _)| n == &format!("{fqdn}.") && t == "A")
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].2, vec!["10.10.0.100".to_string()]);
    // A changed address replaces the record.
    r.send(&upsert(site, &fqdn, "10.10.0.101")).await;
    assert_eq!(r.event().await.0, "dns.upserted");
    assert_eq!(
        pdns.query_a(&fqdn).unwrap(),
        vec!["10.10.0.101".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    // Delete, twice: gone, and absence is success.
    for _ in 0..2 {
        r.send(&DnsDelete {
            site_id: site,
            fqdn: fqdn.clone(),
            record_type: RecordType::A,
        })
        .await;
        assert_eq!(r.event().await.0, "dns.deleted");
    }
    assert!(pdns.query_a(&fqdn).unwrap().is_empty(), "the name no longer answers");
    // A name outside the zone is refused by PowerDNS: the step fails with its message.
    r.send(&upsert(site, "blog.elsewhere.test", "10.10.0.100")).await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "dns.upsert_failed");
    assert_eq!(body["error"]["code"], "powerdns.refused", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("out of zone"),
        "{body}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_fails_the_step_without_retrying() {
    let (pdns, caddy) = (PowerDns::start(ZONE).await.unwrap(), Caddy::start().await.unwrap());
    let r = rig(&pdns, &caddy, |s| {
        s.edge.powerdns_api_key = Some(pvefleet_core::Secret::new("wrong"));
    })
    .await;
    r.send(&upsert(SiteId::new(), &format!("blog.{ZONE}"), "10.10.0.100"))
        .await;
    let (kind, body) = r.event().await;
    assert_eq!(kind, "dns.upsert_failed");
    assert_eq!(body["error"]["code"], "powerdns.auth", "{body}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dns_target_proxy_the_record_points_at_the_proxy() {
    let (pdns, caddy) = (PowerDns::start(ZONE).await.unwrap(), Caddy::start().await.unwrap());
    let r = rig(&pdns, &caddy, |s| {
        s.edge.dns_target = "proxy".into();
        s.edge.proxy_ip = "203.0.113.10".into();
    })
    .await;
    let fqdn = format!("shop.{ZONE}");
    r.send(&upsert(SiteId::new(), &fqdn, "10.10.0.100")).await;
    assert_eq!(r.event().await.0, "dns.upserted");
    assert_eq!(
        pdns.query_a(&fqdn).unwrap(),
        vec!["203.0.113.10".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_routes_reach_the_backend_through_a_real_caddy_once_and_go_away() {
    let (pdns, caddy) = (PowerDns::start(ZONE).await.unwrap(), Caddy::start().await.unwrap());
    let r = rig(&pdns, &caddy, |_| {}).await;
    let first = http_backend("hello from the first container").await.unwrap();
    let second = http_backend("hello from the second container").await.unwrap();
    let site = SiteId::new();
    let host = format!("blog.{ZONE}");
    // Twice: one route.
    for _ in 0..2 {
        r.send(&ProxyUpsert {
            site_id: site,
            host: host.clone(),
            upstream: first.to_string(),
        })
        .await;
        assert_eq!(r.event().await.0, "proxy.upserted");
    }
    let routes = caddy.routes().await.unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["@id"], format!("pvefleet-{site}"));
    assert_eq!(
        caddy.get(&host).await.unwrap(),
        (200, "hello from the first container".to_string())
    );
    // Another host gets nothing.
    assert_eq!(caddy.get("other.sites.test").await.unwrap(), (200, String::new()));
    // A new upstream replaces the route in place.
    r.send(&ProxyUpsert {
        site_id: site,
        host: host.clone(),
        upstream: second.to_string(),
    })
    .await;
    assert_eq!(r.event().await.0, "proxy.upserted");
    assert_eq!(caddy.routes().await.unwrap().len(), 1);
    assert_eq!(
        caddy.get(&host).await.unwrap(),
        (200, "hello from the second container".to_string())
    );
    // Delete, twice: no route, and absence is success.
    for _ in 0..2 {
        r.send(&ProxyDelete {
            site_id: site,
            host: host.clone(),
        })
        .await;
        assert_eq!(r.event().await.0, "proxy.deleted");
    }
    assert!(caddy.routes().await.unwrap().is_empty());
    assert_eq!(caddy.get(&host).await.unwrap(), (200, String::new()));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_is_retried_not_failed() {
    let (pdns, caddy) = (PowerDns::start(ZONE).await.unwrap(), Caddy::start().await.unwrap());
    let port = pvefleet_testkit::edge::free_port().unwrap();
    let r = rig(&pdns, &caddy, |s| {
        s.edge.caddy_admin_url = format!("http://127.0.0.1:{port}");
        s.edge.timeout = Duration::from_secs(2);
    })
    .await;
    r.send(&ProxyUpsert {
        site_id: SiteId::new(),
        host: format!("blog.{ZONE}"),
        upstream: "10.10.0.100:80".into(),
    })
    .await;
    // Retried until the attempts run out, then parked: never a `proxy.upsert_failed`.
    let parked = pvefleet_testkit::broker::take(&r.events.0, pvefleet_contracts::routing::PARKED_QUEUE, 1, WAIT)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    let reason = parked[0]
        .properties
        .header_str(pvefleet_contracts::headers::fault::MESSAGE)
        .unwrap();
    assert!(reason.contains("cannot connect"), "{reason}");
    let none = pvefleet_testkit::broker::next_json(&r.events.0, &r.events.1, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(none.is_none(), "no failure event for a transient fault: {none:?}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_of_one_site_at_once_leave_one_caddy_route() {
    // Caddy 2.6 takes a second route with the same @id; the conditional add keeps it to one.
    let caddy = Caddy::start().await.unwrap();
    let _ = rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    let proxy = pvefleet_edge::proxy::Caddy::new(Duration::from_secs(10), &caddy.admin_url, "edge").unwrap();
    for round in 0..5 {
        let sites: Vec<SiteId> = (0..2).map(|_| SiteId::new()).collect();
        let calls = (0..16).map(|i| {
            let (proxy, site) = (proxy.clone(), sites[i % 2]);
            async move {
                // Caddy restarts its admin listener on each change, so some calls meet a reset
                // connection; the runner retries those (ProviderError::Retry), and so does this.
                let mut attempt = 0;
                loop {
                    match proxy
                        .upsert(&site, &format!("s{round}-{i}.{ZONE}"), "127.0.0.1:9")
                        .await
                    {
                        Err(pvefleet_edge::provider::ProviderError::Retry(e)) if attempt < 50 => {
                            attempt += 1;
                            tracing::debug!(error = %e, "retrying");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => break other,
                    }
                }
            }
        });
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        let routes = caddy.routes().await.unwrap();
        for site in &sites {
            let id = format!("pvefleet-{site}");
            let n = routes.iter().filter(|r| r["@id"] == id.as_str()).count();
            assert_eq!(n, 1, "round {round}: one route for {site}: {routes:?}");
        }
    }
}

#[test]
fn the_binary_answers_help_and_version_and_starts_nothing() {
    let checked = pvefleet_testkit::cli::answers_help_and_version(env!("CARGO_BIN_EXE_pvefleet-edge"), "pvefleet-edge");
    assert_eq!(checked, Ok(()));
    assert_eq!(
        pvefleet_testkit::cli::refuses_arguments(env!("CARGO_BIN_EXE_pvefleet-edge")),
        Ok(())
    );
}
