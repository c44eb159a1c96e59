//! The PVE client against pvesim: every failure PVE produces is classified correctly and keeps
//! PVE's message; tasks are followed to their end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pvefleet_proxmox::client::{Auth, Class, ClientSettings, Params, PveClient, Reason, TlsMode};
use pvefleet_pvesim::{Fault, Sim, SimConfig};

const TOKEN_ID: &str = "fleet@pve!ci";
const SECRET: &str = "0d8f3e2a-1111-2222-3333-444455556666";

async fn setup(task_duration: Duration) -> (Sim, PveClient) {
    let config = SimConfig {
        token: Some((TOKEN_ID.into(), SECRET.into())),
        task_duration,
        ..SimConfig::default()
    };
    let (sim, addr) = Sim::spawn(config).await.unwrap();
    let client = PveClient::new(ClientSettings {
        url: format!("http://{addr}"),
        auth: Auth::Token {
            id: TOKEN_ID.into(),
            secret: SECRET.into(),
        },
        tls: TlsMode::Verified,
        request_timeout: Duration::from_secs(2),
        task_timeout: Duration::from_secs(10),
        read_retries: 0,
    })
    .unwrap();
    (sim, client)
}

fn create_params(vmid: u32) -> Params {
    Params::new()
        .set("vmid", vmid)
        .set("ostemplate", "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst")
        .set("hostname", "blog")
        .set("memory", 1024)
        .set("rootfs", "local-lvm:8")
        .set("net0", "name=eth0,bridge=vmbr0,ip=dhcp")
        .flag("unprivileged", true)
}

fn fault(path: &str, status: u16, message: &str) -> Fault {
    serde_json::from_value(serde_json::json!({ "path": path, "status": status, "message": message })).unwrap()
}

#[tokio::test]
async fn version_nodes_and_nextid_decode() {
    let (_sim, c) = setup(Duration::ZERO).await;
    let v = c.version().await.unwrap();
    assert_eq!(v.major(), 9);
    let nodes = c.nodes().await.unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(),
        vec!["pve1", "pve2"]
    );
    assert_eq!(nodes[0].maxcpu, Some(16), "the default simulated node has 16 CPUs");
    assert_eq!(
        c.next_id().await.unwrap(),
        100,
        "nextid arrives as a string and decodes"
    );
}

#[tokio::test]
async fn create_follows_the_task_and_a_second_create_is_already_exists() {
    let (_sim, c) = setup(Duration::from_millis(300)).await;
    let done = c.lxc_create("pve1", create_params(101)).await.unwrap();
    assert_eq!(done.exitstatus.as_deref(), Some("OK"));
    let config = c.lxc_config("pve1", 101, true).await.unwrap();
    assert_eq!(config["hostname"], "blog");
    assert_eq!(config["rootfs"], "local-lvm:vm-101-disk-0,size=8G");
    assert!(
        config.get("lock").is_none(),
        "the create lock is gone once the task ended"
    );
    let err = c.lxc_create("pve2", create_params(101)).await.unwrap_err();
    assert_eq!(
        (err.status, err.class, err.reason),
        (Some(500), Class::Permanent, Reason::AlreadyExists)
    );
    assert_eq!(err.message, "CT 101 already exists on node 'pve1'");
}

#[tokio::test]
async fn a_config_put_during_create_is_locked_and_transient() {
    let (_sim, c) = setup(Duration::from_secs(3)).await;
    let upid: String = c.post("/nodes/pve1/lxc", create_params(102)).await.unwrap();
    let err = c
        .lxc_set_config("pve1", 102, Params::new().set("memory", 2048), None)
        .await
        .unwrap_err();
    assert_eq!((err.class, err.reason), (Class::Transient, Reason::Locked));
    assert_eq!(err.message, "CT is locked (create)");
    c.wait_task(&upid).await.unwrap();
    c.lxc_set_config("pve1", 102, Params::new().set("memory", 2048), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stale_digest_is_refused() {
    let (_sim, c) = setup(Duration::ZERO).await;
    c.lxc_create("pve1", create_params(103)).await.unwrap();
    let digest = c.lxc_config("pve1", 103, true).await.unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    c.lxc_set_config("pve1", 103, Params::new().set("memory", 2048), Some(&digest))
        .await
        .unwrap();
    let err = c
        .lxc_set_config("pve1", 103, Params::new().set("memory", 4096), Some(&digest))
        .await
        .unwrap_err();
    assert!(err.message.contains("detected modified configuration"), "{err}");
    assert!(err.is_transient(), "re-read and retry");
}

#[tokio::test]
async fn every_pve_failure_is_classified_and_keeps_its_message() {
    let (sim, c) = setup(Duration::ZERO).await;
    let cases = [
        (
            403,
            "Permission check failed (/vms/100, VM.Allocate)",
            Class::Permanent,
            Reason::Forbidden,
        ),
        (500, "CT is locked (backup)", Class::Transient, Reason::Locked),
        (
            500,
            "Configuration file 'nodes/pve1/lxc/100.conf' does not exist",
            Class::Permanent,
            Reason::NotFound,
        ),
        (595, "Connection refused", Class::Transient, Reason::Other),
        (596, "Connection timed out", Class::Transient, Reason::Other),
        (
            500,
            "got no worker upid - start worker failed",
            Class::Transient,
            Reason::Other,
        ),
    ];
    for (status, message, class, reason) in cases {
        sim.inject(fault("/version", status, message));
        let err = c.version().await.unwrap_err();
        assert_eq!(
            (err.status, err.class, err.reason),
            (Some(status), class, reason),
            "{message}"
        );
        assert_eq!(err.message, message);
    }
    let err = c
        .get::<serde_json::Value>("/cluster/nonsense", Params::new())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status, err.class, err.reason),
        (Some(501), Class::Permanent, Reason::NotImplemented)
    );
    assert!(err.message.contains("not implemented"), "{err}");
}

#[tokio::test]
async fn a_400_keeps_its_per_parameter_errors() {
    let (_sim, c) = setup(Duration::ZERO).await;
    let err = c
        .lxc_create(
            "pve1",
            create_params(104).set("net1", "name=eth1,tag=9999").set("bogus", "1"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.status, err.class, err.reason),
        (Some(400), Class::Permanent, Reason::InvalidParameters)
    );
    assert!(err.errors["net1"].contains("tag"), "{:?}", err.errors);
    assert!(
        err.errors["bogus"].contains("not defined in schema"),
        "{:?}",
        err.errors
    );
    let err = c
        .lxc_create("pve1", create_params(105).set("onboot", "true"))
        .await
        .unwrap_err();
    assert!(
        err.errors["onboot"].contains("type check ('boolean') failed"),
        "{:?}",
        err.errors
    );
}

#[tokio::test]
async fn a_task_ending_in_error_carries_the_log_tail() {
    let (sim, c) = setup(Duration::from_millis(200)).await;
    sim.lock_task_error("vzcreate", "unable to create CT 106 - storage 'local-lvm' is full");
    let err = c.lxc_create("pve1", create_params(106)).await.unwrap_err();
    assert_eq!(err.reason, Reason::TaskFailed);
    assert!(err.message.contains("storage 'local-lvm' is full"), "{err}");
    assert!(
        err.task_log.iter().any(|l| l.contains("TASK ERROR")),
        "{:?}",
        err.task_log
    );
    let gone = c.lxc_status("pve1", 106).await.unwrap_err();
    assert_eq!(gone.reason, Reason::NotFound, "a failed create leaves no container");
}

#[tokio::test]
async fn timeouts_and_dropped_connections_are_transient() {
    let (sim, c) = setup(Duration::ZERO).await;
    sim.inject(serde_json::from_value(serde_json::json!({ "path": "/version", "latency_ms": 3000 })).unwrap());
    let err = c.version().await.unwrap_err();
    assert_eq!((err.status, err.class), (None, Class::Transient));
    assert!(err.message.contains("timed out"), "{err}");
    sim.inject(fault("/nodes", 0, ""));
    let err = c.nodes().await.unwrap_err();
    assert_eq!((err.status, err.class), (None, Class::Transient), "{err}");
    assert_eq!(c.nodes().await.unwrap().len(), 2, "the next call works");
}

#[tokio::test]
async fn a_wrong_token_is_refused_permanently() {
    let (sim2, addr2) = Sim::spawn(SimConfig {
        token: Some((TOKEN_ID.into(), "other".into())),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let wrong = PveClient::new(ClientSettings {
        url: format!("http://{addr2}"),
        auth: Auth::Token {
            id: TOKEN_ID.into(),
            secret: SECRET.into(),
        },
        tls: TlsMode::Verified,
        request_timeout: Duration::from_secs(2),
        task_timeout: Duration::from_secs(2),
        read_retries: 0,
    })
    .unwrap();
    let err = wrong.version().await.unwrap_err();
    assert_eq!(
        (err.status, err.class, err.reason),
        (Some(401), Class::Permanent, Reason::Forbidden)
    );
    drop(sim2);
}

#[tokio::test]
async fn power_and_destroy_with_purge_follow_their_tasks() {
    let (_sim, c) = setup(Duration::from_millis(100)).await;
    c.lxc_create("pve1", create_params(107)).await.unwrap();
    c.lxc_power("pve1", 107, "start", Params::new()).await.unwrap();
    assert_eq!(c.lxc_status("pve1", 107).await.unwrap().status, "running");
    let err = c.lxc_destroy("pve1", 107, true, false).await.unwrap_err();
    assert!(err.message.contains("is running"), "{err}");
    c.lxc_power("pve1", 107, "shutdown", Params::new().set("timeout", 30))
        .await
        .unwrap();
    assert_eq!(c.lxc_status("pve1", 107).await.unwrap().status, "stopped");
    c.lxc_destroy("pve1", 107, true, false).await.unwrap();
    let err = c.lxc_status("pve1", 107).await.unwrap_err();
    assert_eq!(err.reason, Reason::NotFound);
}

#[tokio::test]
async fn reads_are_retried_on_transient_failures_and_writes_are_not() {
    let (sim, addr) = Sim::spawn(SimConfig::default()).await.unwrap();
    let c = PveClient::new(ClientSettings {
        url: format!("http://{addr}"),
        auth: Auth::Token {
            id: TOKEN_ID.into(),
            secret: SECRET.into(),
        },
        tls: TlsMode::Verified,
        request_timeout: Duration::from_secs(2),
        task_timeout: Duration::from_secs(5),
        read_retries: 2,
    })
    .unwrap();
    sim.inject(
        serde_json::from_value(
            serde_json::json!({ "path": "/version", "status": 596, "message": "Connection timed out", "count": 2 }),
        )
        .unwrap(),
    );
    assert_eq!(
        c.version().await.unwrap().major(),
        9,
        "two transient failures, then success"
    );
    sim.inject(
        serde_json::from_value(
            serde_json::json!({ "path": "/version", "status": 596, "message": "Connection timed out", "count": 3 }),
        )
        .unwrap(),
    );
    let err = c.version().await.unwrap_err();
    assert_eq!(err.status, Some(596), "three in a row exhaust two retries");
    sim.inject(
        serde_json::from_value(
            serde_json::json!({ "path": "/version", "status": 403, "message": "Permission check failed", "count": 1 }),
        )
        .unwrap(),
    );
    assert_eq!(
        c.version().await.unwrap_err().status,
        Some(403),
        "a permanent failure is not retried"
    );
    assert_eq!(c.version().await.unwrap().major(), 9);
    sim.inject(serde_json::from_value(serde_json::json!({ "path": "/nodes/pve1/lxc", "method": "POST", "status": 596, "message": "Connection timed out", "count": 1 })).unwrap());
    let err = c.lxc_create("pve1", create_params(150)).await.unwrap_err();
    assert_eq!(err.status, Some(596), "a write is left to the caller");
}

#[tokio::test]
async fn a_hostile_name_in_a_path_is_encoded_never_interpreted() {
    use pvefleet_proxmox::client::enc;
    // Each name stays one segment: `/`, `?`, `#`, `%`, `,` and `=` are encoded.
    assert_eq!(enc("../../etc/passwd"), "..%2F..%2Fetc%2Fpasswd");
    assert_eq!(enc("x?y#z"), "x%3Fy%23z");
    assert_eq!(enc("x,rootfs=local:100"), "x%2Crootfs%3Dlocal%3A100");
    assert_eq!(enc("50%"), "50%25");
    assert_eq!(enc("UPID:pve1:0001!x"), "UPID%3Apve1%3A0001%21x");
    assert_eq!(enc("pve-1.a_b~"), "pve-1.a_b~");

    // What goes on the wire, read by a bare listener that answers every request with a 404.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = lines.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            seen.lock()
                .unwrap()
                .push(head.lines().next().unwrap_or_default().to_string());
            let body = r#"{"data":null,"message":"no such node"}"#;
            let reply = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    let client = PveClient::new(ClientSettings {
        url: format!("http://{addr}"),
        auth: Auth::Token {
            id: TOKEN_ID.into(),
            secret: SECRET.into(),
        },
        tls: TlsMode::Verified,
        request_timeout: Duration::from_secs(2),
        task_timeout: Duration::from_secs(10),
        read_retries: 0,
    })
    .unwrap();
    for node in ["../../etc/passwd", "pve1?x=1", "a/b#c", "%2e%2E"] {
        let err = client.node_status(node).await.unwrap_err();
        assert_eq!(err.status, Some(404), "{node}: {err}");
    }
    assert_eq!(
        *lines.lock().unwrap(),
        [
            "GET /api2/json/nodes/..%2F..%2Fetc%2Fpasswd/status HTTP/1.1",
            "GET /api2/json/nodes/pve1%3Fx%3D1/status HTTP/1.1",
            "GET /api2/json/nodes/a%2Fb%23c/status HTTP/1.1",
            "GET /api2/json/nodes/%252e%252E/status HTTP/1.1",
        ],
        "each name went as one encoded segment"
    );
    // A name of only dots cannot be encoded away, so nothing is sent at all.
    for node in ["..", ".", ""] {
        let err = client.node_status(node).await.unwrap_err();
        assert_eq!((err.status, err.class), (Some(400), Class::Permanent), "{node}: {err}");
        assert!(err.to_string().contains("nothing was sent"), "{node}: {err}");
    }
    assert_eq!(lines.lock().unwrap().len(), 4, "the dot segments never reached PVE");
}
