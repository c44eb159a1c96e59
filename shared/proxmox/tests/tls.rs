//! The client's TLS modes against pvesim over HTTPS, with a CA and a server certificate made
//! by `openssl` for the test: verified by default (an unknown CA is refused), a CA file, a
//! SHA-256 fingerprint pin (a wrong pin is refused), and insecure only when asked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pvefleet_proxmox::client::{Auth, Class, ClientSettings, PveClient, TlsMode};
use pvefleet_pvesim::{Sim, SimConfig};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate for 127.0.0.1 signed by it. Returns the directory.
fn certificates() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pvefleet-tls-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pvefleet test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    openssl(&dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn fingerprint(dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-in", "server.pem", "-noout", "-fingerprint", "-sha256"])
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().rsplit('=').next().unwrap().to_string()
}

fn client(addr: std::net::SocketAddr, tls: TlsMode) -> PveClient {
    PveClient::new(ClientSettings {
        url: format!("https://127.0.0.1:{}", addr.port()),
        auth: Auth::Token {
            id: common::TOKEN_ID.into(),
            secret: common::SECRET.into(),
        },
        tls,
        request_timeout: Duration::from_secs(3),
        task_timeout: Duration::from_secs(5),
        read_retries: 0,
    })
    .unwrap()
}

#[tokio::test]
async fn every_tls_mode_trusts_exactly_what_it_should() {
    let dir = certificates();
    let cert = std::fs::read(dir.join("server.pem")).unwrap();
    let key = std::fs::read(dir.join("server.key")).unwrap();
    let (_sim, addr) = Sim::spawn_tls(
        SimConfig {
            token: Some((common::TOKEN_ID.into(), common::SECRET.into())),
            ..SimConfig::default()
        },
        &cert,
        &key,
    )
    .await
    .unwrap();

    // Verified (the default): the test CA is in no trust store.
    let err = client(addr, TlsMode::Verified).version().await.unwrap_err();
    assert_eq!((err.status, err.class), (None, Class::Transient));
    assert!(err.message.to_lowercase().contains("certificate"), "{err}");

    // The CA file.
    let v = client(addr, TlsMode::CaFile(dir.join("ca.pem")))
        .version()
        .await
        .unwrap();
    assert_eq!(v.major(), 9);

    // The fingerprint pin, as PVE shows it (upper case, colons) and in lower case.
    let fp = fingerprint(&dir);
    client(addr, TlsMode::Fingerprint(fp.clone())).version().await.unwrap();
    client(addr, TlsMode::Fingerprint(fp.to_lowercase()))
        .version()
        .await
        .unwrap();
    let mut wrong = fp.clone();
    wrong.replace_range(0..2, if &fp[0..2] == "00" { "11" } else { "00" });
    let err = client(addr, TlsMode::Fingerprint(wrong)).version().await.unwrap_err();
    assert_eq!(err.status, None, "{err}");

    // Insecure, only when asked.
    client(addr, TlsMode::Insecure).version().await.unwrap();

    // Settings that cannot work are refused when the client is built, not at the first call.
    let bad_fp = PveClient::new(ClientSettings {
        url: format!("https://127.0.0.1:{}", addr.port()),
        auth: Auth::Token {
            id: "a@pve!b".into(),
            secret: "c".into(),
        },
        tls: TlsMode::Fingerprint("not-a-fingerprint".into()),
        request_timeout: Duration::from_secs(1),
        task_timeout: Duration::from_secs(1),
        read_retries: 0,
    });
    assert!(bad_fp.is_err());
    let no_ca = PveClient::new(ClientSettings {
        url: format!("https://127.0.0.1:{}", addr.port()),
        auth: Auth::Token {
            id: "a@pve!b".into(),
            secret: "c".into(),
        },
        tls: TlsMode::CaFile(dir.join("missing.pem")),
        request_timeout: Duration::from_secs(1),
        task_timeout: Duration::from_secs(1),
        read_retries: 0,
    });
    assert!(no_ca.is_err());
    std::fs::remove_dir_all(&dir).ok();
}
