//! Cloudflare and Nginx Proxy Manager, against small faithful fakes of their documented APIs
//! (`fakes/`): create, update on a changed address, a duplicate on create (81058), delete of
//! something missing, token expiry and refresh, 429/5xx retry. One test goes through the bus.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fakes;

use std::time::Duration;

use fakes::{FakeCloudflare, FakeNpm};
use pvefleet_contracts::ids::SiteId;
use pvefleet_core::Secret;
use pvefleet_edge::cloudflare::Cloudflare;
use pvefleet_edge::npm::Npm;
use pvefleet_edge::provider::ProviderError;

const ZONE: &str = "sites.test";

fn http() -> reqwest::Client {
    let _ = rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn cloudflare(fake: &FakeCloudflare) -> Cloudflare {
    Cloudflare::new(http(), &fake.url, Secret::new("cf-token"), ZONE, None, false)
}

#[tokio::test]
async fn cloudflare_creates_updates_on_a_changed_address_and_deletes_tolerating_absence() {
    let fake = FakeCloudflare::start(ZONE).await;
    let cf = cloudflare(&fake);
    let name = "blog.sites.test";
    cf.upsert(name, "A", "10.10.0.100", 300, "pvefleet-site: s1")
        .await
        .unwrap();
    cf.upsert(name, "A", "10.10.0.100", 300, "pvefleet-site: s1")
        .await
        .unwrap();
    let records = fake.records(name);
    assert_eq!(records.len(), 1, "an upsert twice is one record");
    assert_eq!(records[0].comment, "pvefleet-site: s1");
    let writes = |f: &FakeCloudflare| {
        f.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.starts_with("POST") || r.starts_with("PUT"))
            .count()
    };
    assert_eq!(
        writes(&fake),
        1,
        "the second upsert found the same record and wrote nothing"
    );
    // A changed address overwrites the record in place.
    cf.upsert(name, "A", "10.10.0.101", 300, "pvefleet-site: s1")
        .await
        .unwrap();
    let records = fake.records(name);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].content, "10.10.0.101");
    // Extra records on the name (left by a racing POST) are removed.
    fake.state.lock().unwrap().records.push(fakes::CfRecord {
        id: "extra".into(),
        kind: "A".into(),
        name: name.into(),
        content: "10.10.0.200".into(),
        ttl: 300,
        proxied: false,
        comment: String::new(),
    });
    cf.upsert(name, "A", "10.10.0.101", 300, "pvefleet-site: s1")
        .await
        .unwrap();
    assert_eq!(fake.records(name).len(), 1);
    // Delete, then delete again: absence is success.
    cf.delete(name, "A").await.unwrap();
    assert!(fake.records(name).is_empty());
    cf.delete(name, "A").await.unwrap();
}

#[tokio::test]
async fn cloudflare_takes_81058_on_create_and_81044_on_delete_as_success() {
    let fake = FakeCloudflare::start(ZONE).await;
    let cf = cloudflare(&fake);
    let name = "race.sites.test";
    cf.upsert(name, "A", "10.10.0.100", 300, "c").await.unwrap();
    // The next list misses the record (made by a racing delivery): the POST meets 81058.
    fake.state.lock().unwrap().hide_next_list = true;
    cf.upsert(name, "A", "10.10.0.100", 300, "c").await.unwrap();
    assert_eq!(fake.records(name).len(), 1);
    // The record vanishes between the lookup and the delete: 404 with 81044.
    fake.state.lock().unwrap().vanish_before_delete = true;
    cf.delete(name, "A").await.unwrap();
    assert!(fake.records(name).is_empty());
}

#[tokio::test]
async fn cloudflare_auth_errors_fail_and_throttling_retries() {
    let fake = FakeCloudflare::start(ZONE).await;
    let wrong = Cloudflare::new(http(), &fake.url, Secret::new("nope"), ZONE, None, false);
    match wrong.upsert("a.sites.test", "A", "10.0.0.1", 300, "c").await {
        Err(ProviderError::Fail { code, message }) => {
            assert_eq!(code, "cloudflare.auth");
            assert!(message.contains("10000"), "{message}");
        }
        other => panic!("expected an auth failure, got {other:?}"),
    }
    let cf = cloudflare(&fake);
    fake.state.lock().unwrap().fail_next.extend([429]);
    assert!(matches!(
        cf.upsert("a.sites.test", "A", "10.0.0.1", 300, "c").await,
        Err(ProviderError::Retry(m)) if m.contains("429")
    ));
    fake.state.lock().unwrap().fail_next.extend([503]);
    assert!(matches!(
        cf.delete("a.sites.test", "A").await,
        Err(ProviderError::Retry(_))
    ));
}

fn npm(fake: &FakeNpm) -> Npm {
    Npm::new(http(), &fake.url, "admin@example.test", Secret::new("changeme"), 7)
}

#[tokio::test]
async fn npm_creates_updates_adopts_its_own_and_leaves_anyone_elses_alone() {
    let fake = FakeNpm::start(Duration::from_secs(86_400)).await;
    let client = npm(&fake);
    let (site, domain) = (SiteId::new(), "blog.sites.test");
    client.upsert(&site, domain, "10.10.0.100:80").await.unwrap();
    client.upsert(&site, domain, "10.10.0.100:80").await.unwrap();
    let hosts = fake.hosts(domain);
    assert_eq!(hosts.len(), 1, "one proxy host per site");
    assert_eq!(hosts[0]["forward_host"], "10.10.0.100");
    assert_eq!(hosts[0]["certificate_id"], 7);
    assert!(
        hosts[0]["advanced_config"]
            .as_str()
            .unwrap()
            .contains(&site.to_string())
    );
    // A changed address updates the host.
    client.upsert(&site, domain, "10.10.0.101:80").await.unwrap();
    let hosts = fake.hosts(domain);
    assert_eq!(
        (hosts.len(), hosts[0]["forward_host"].as_str()),
        (1, Some("10.10.0.101"))
    );
    // Another site's request for the same domain fails and leaves the host alone.
    let other = SiteId::new();
    match client.upsert(&other, domain, "10.10.0.150:80").await {
        Err(ProviderError::Fail { code, message }) => {
            assert_eq!(code, "npm.refused");
            assert!(message.contains("not this site's"), "{message}");
        }
        r => panic!("expected a refusal, got {r:?}"),
    }
    client.delete(&other, domain).await.unwrap();
    assert_eq!(fake.hosts(domain).len(), 1, "a delete leaves a host that is not ours");
    // Delete, and again: absence is success.
    client.delete(&site, domain).await.unwrap();
    assert!(fake.hosts(domain).is_empty());
    client.delete(&site, domain).await.unwrap();
    assert_eq!(fake.state.lock().unwrap().logins, 1, "one login serves every call");
}

#[tokio::test]
async fn npm_refreshes_a_token_close_to_expiry_and_logs_in_again_after_a_401() {
    // Tokens live 30 minutes: each is within the refresh margin at once.
    let fake = FakeNpm::start(Duration::from_secs(1800)).await;
    let client = npm(&fake);
    let site = SiteId::new();
    client.upsert(&site, "a.sites.test", "10.10.0.100:80").await.unwrap();
    client.upsert(&site, "b.sites.test", "10.10.0.101:80").await.unwrap();
    {
        let s = fake.state.lock().unwrap();
        assert_eq!(s.logins, 1);
        assert!(s.refreshes >= 1, "a token close to its expiry is refreshed");
    }
    // Every token is revoked (NPM restarted with a new secret key): the next call gets 401,
    // logs in again and succeeds.
    fake.state.lock().unwrap().tokens.clear();
    client.delete(&site, "a.sites.test").await.unwrap();
    assert!(fake.hosts("a.sites.test").is_empty());
    assert_eq!(fake.state.lock().unwrap().logins, 2);
    // 5xx and 429 are transient. (Two: the token refresh meets the first and falls back to a
    // login; the listing meets the second.)
    fake.state.lock().unwrap().fail_next.extend([502, 429]);
    assert!(matches!(
        client.delete(&site, "b.sites.test").await,
        Err(ProviderError::Retry(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_bus_throttled_cloudflare_calls_are_retried_until_the_record_is_written() {
    use pvefleet_contracts::Message;
    use pvefleet_contracts::messages::{DnsUpsert, RecordType};
    use pvefleet_core::bus::outgoing::Origin;
    use pvefleet_core::bus::{Outgoing, Publisher};
    pvefleet_testkit::init_tracing();
    let fake = FakeCloudflare::start(ZONE).await;
    fake.state.lock().unwrap().fail_next.extend([429, 503, 429]);
    let vhost = pvefleet_testkit::TestVhost::new().unwrap();
    let mut s = pvefleet_testkit::settings(&vhost, None);
    s.saga.dns_provider = "cloudflare".into();
    s.saga.domain = ZONE.into();
    s.edge.cloudflare_api_url = fake.url.clone();
    s.edge.cloudflare_api_token = Some(Secret::new("cf-token"));
    s.bus.max_attempts = 6;
    s.bus.retry_tiers = vec![Duration::from_millis(200)];
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (s, sd) = (s.clone(), shutdown.clone());
        async move { pvefleet_edge::run(&s, None, sd).await }
    });
    let publisher = Publisher::new(
        &s.bus,
        "test",
        Some(pvefleet_core::bus::topology::Topology::fleet(&s.bus)),
    );
    publisher.connect().await.unwrap();
    let ch = vhost.probe().await.unwrap();
    let q = pvefleet_testkit::broker::event_queue(&ch, &["dns.*"]).await.unwrap();
    let cmd = DnsUpsert {
        site_id: SiteId::new(),
        fqdn: "shop.sites.test".into(),
        record_type: RecordType::A,
        content: "10.10.0.120".into(),
        ttl: None,
    };
    let origin = Origin {
        correlation_id: Some(uuid::Uuid::now_v7()),
        ..Origin::default()
    };
    publisher
        .publish(&Outgoing::message(&cmd, &origin).unwrap())
        .await
        .unwrap();
    let (kind, _) = pvefleet_testkit::broker::next_json(&ch, &q, Duration::from_secs(20))
        .await
        .unwrap()
        .expect("an event");
    assert_eq!(kind, <pvefleet_contracts::messages::DnsUpserted as Message>::TYPE);
    let records = fake.records("shop.sites.test");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].ttl, 300);
    assert!(
        fake.state.lock().unwrap().fail_next.is_empty(),
        "the throttled calls were all met"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
