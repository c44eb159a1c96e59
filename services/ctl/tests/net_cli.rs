//! `pvefleet net ...` and `pvefleet vnet ...` against intake, nethotplug and the saga
//! coordinator in-process (real RabbitMQ vhost and Postgres database), over pvesim.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use pvefleet_pvesim::{Load, Sim, SimConfig};
use pvefleet_testkit::{TestDb, TestVhost, settings};
use tokio_util::sync::CancellationToken;

const CT: u32 = 300;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn pvefleet(api: &str, token: &str, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--api".into(), api.into()]);
    let token = token.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pvefleet"))
            .args(&all)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PVEFLEET_TOKEN", token)
            .output()
            .expect("the binary runs")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_and_vnet_commands_follow_operations_to_their_end() {
    pvefleet_testkit::init_tracing();
    let vhost = TestVhost::new().unwrap();
    let db = TestDb::create().await.unwrap();
    let mut s = settings(&vhost, Some(&db));
    let (sim, addr) = Sim::spawn(SimConfig {
        token: Some(("f@pve!c".into(), "x".into())),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.populate(CT, 1, Load::default());
    pvefleet_testkit::use_pvesim(&mut s, addr, "f@pve!c", "x");
    let pool = pvefleet_core::db::connect(&s.db).await.unwrap();
    pvefleet_core::db::migrate(&pool).await.unwrap();
    let client = pool.get().await.unwrap();
    let token = pvefleet_intake::create_token(&client, "ops", &["network:write".into(), "network:read".into()])
        .await
        .unwrap();
    drop(client);
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_intake::run(&s, pool, listener, Default::default(), sd).await }
    }));
    tasks.push(tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_saga::run(&s, pool, None, sd).await }
    }));
    tasks.push(tokio::spawn({
        let (s, pool, sd) = (s.clone(), pool.clone(), shutdown.clone());
        async move { pvefleet_nethotplug::run(&s, pool, None, sd).await }
    }));

    let ct = CT.to_string();
    let out = pvefleet(
        &api,
        &token,
        &[
            "net", "attach", &ct, "--bridge", "vmbr1", "--ip", "dhcp", "--tag", "40", "--wait",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("net.attach net1 of container 300: succeeded"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("net1: "))
        .expect("the line is printed")
        .to_string();
    assert!(
        sim.config_text(CT)
            .unwrap()
            .lines()
            .any(|l| l == format!("net1: {line}"))
    );

    let out = pvefleet(&api, &token, &["net", "update", &ct, "net1", "--mtu", "1400", "--wait"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("pending_reboot") && stdout.contains("applies net1 at the next restart"),
        "{stdout}"
    );

    // A refused request: the field is named and the exit code is 2.
    let out = pvefleet(
        &api,
        &token,
        &["net", "attach", &ct, "--bridge", "vmbr0", "--tag", "5000"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("tag:"), "{}", text(&out.stderr));

    let out = pvefleet(&api, &token, &["net", "list", &ct]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("net1") && stdout.contains("pending"), "{stdout}");
    assert!(
        stdout.contains("recent operations:") && stdout.contains("net.update"),
        "{stdout}"
    );

    let out = pvefleet(
        &api,
        &token,
        &[
            "vnet",
            "bind",
            "apps",
            "--vmid",
            &ct,
            "--ensure-zone",
            "fleet",
            "--wait",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("vnet.provision net2 of container 300: succeeded"),
        "{stdout}"
    );
    let out = pvefleet(&api, &token, &["vnet", "containers", "apps"]).await;
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("300") && l.contains("net2") && l.contains("bound")),
        "{stdout}"
    );
    let out = pvefleet(&api, &token, &["vnet", "unbind", "apps", "--vmid", &ct, "--wait"]).await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!sim.config_text(CT).unwrap().contains("bridge=apps"));

    let out = pvefleet(&api, &token, &["net", "detach", &ct, "net1", "--wait"]).await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));

    let out = pvefleet(&api, &token, &["net", "stats"]).await;
    let stdout = text(&out.stdout);
    let attached = stdout
        .lines()
        .find(|l| l.starts_with("net.attached"))
        .expect("net.attached is counted");
    let counts: Vec<&str> = attached.split_whitespace().collect();
    assert_eq!(counts[1..], ["1", "1", "0", "0"], "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("vnet.unbound")), "{stdout}");
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}
