//! pvesim on the wire, like pveproxy: answers over 1 KiB are gzipped for clients that accept
//! gzip, small ones and clients that do not are answered plain, and a body on GET is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;

use pvefleet_pvesim::{Load, Sim, SimConfig};

async fn raw_get(addr: std::net::SocketAddr, path: &str, gzip: bool) -> (Option<String>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = if gzip { "Accept-Encoding: gzip\r\n" } else { "" };
    s.write_all(format!("GET /api2/json{path} HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let encoding = head
        .lines()
        .find_map(|l| l.strip_prefix("content-encoding: "))
        .map(str::to_string);
    let mut body = out[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (encoding, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + size]);
        b = &b[line_end + 2 + size + 2..];
    }
}

#[tokio::test]
async fn large_answers_are_gzipped_for_clients_that_accept_it() {
    let (sim, addr) = Sim::spawn(SimConfig::default()).await.unwrap();
    sim.populate(
        1000,
        200,
        Load {
            cpu: 0.5,
            ..Load::default()
        },
    );
    let (plain_enc, plain) = raw_get(addr, "/cluster/resources", false).await;
    assert_eq!(plain_enc, None);
    let (enc, zipped) = raw_get(addr, "/cluster/resources", true).await;
    assert_eq!(enc.as_deref(), Some("gzip"));
    assert!(zipped.len() * 4 < plain.len(), "{} vs {}", zipped.len(), plain.len());
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, plain, "the same answer, compressed");
    let v: serde_json::Value = serde_json::from_slice(&unzipped).unwrap();
    assert_eq!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == "lxc")
            .count(),
        200
    );
    let (small_enc, _) = raw_get(addr, "/version", true).await;
    assert_eq!(small_enc, None, "answers up to 1 KiB are not compressed");
}

#[test]
fn the_binary_answers_help_and_version_and_starts_nothing() {
    let checked =
        pvefleet_testkit::cli::answers_help_and_version(env!("CARGO_BIN_EXE_pvefleet-pvesim"), "pvefleet-pvesim");
    assert_eq!(checked, Ok(()));
}
