//! Real edge servers for tests, from Debian's packages, on free loopback ports with their
//! state in a temporary directory (edge-installer.md §3.2–3.3): PowerDNS Authoritative with
//! the sqlite backend and its HTTP API, and Caddy with only its admin API and one HTTP server,
//! automatic HTTPS off. Each is stopped and its directory removed when dropped. A missing
//! binary is an error naming the package, never a skipped test.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A free TCP port on 127.0.0.1 (also free for UDP in practice).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A plain HTTP client for the fixtures (reqwest is built without a default TLS provider).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    reqwest::Client::new()
}

fn temp_dir(kind: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pvefleet-{kind}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn need(binary: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false);
    anyhow::ensure!(
        found,
        "{binary} is not installed: apt-get install -y {package} (scripts/test does)"
    );
    Ok(())
}

async fn wait_http(url: &str, header: Option<(&str, &str)>, what: &str, child: &mut Child) -> anyhow::Result<()> {
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut req = http.get(url);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        if let Ok(r) = req.send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{what} exited with {status} before it answered");
        }
        anyhow::ensure!(Instant::now() < deadline, "{what} did not answer at {url} within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A PowerDNS Authoritative server with one zone.
pub struct PowerDns {
    child: Child,
    dir: PathBuf,
    /// The API base, `http://127.0.0.1:<port>`.
    pub api_url: String,
    /// The API key.
    pub api_key: String,
    /// The DNS port (UDP and TCP) on 127.0.0.1.
    pub dns_port: u16,
    /// The zone, without the trailing dot.
    pub zone: String,
}

impl PowerDns {
    /// Creates `zone` with `pdnsutil`, then starts `pdns_server`.
    pub async fn start(zone: &str) -> anyhow::Result<Self> {
        need("pdns_server", "pdns-server pdns-backend-sqlite3")?;
        need("pdnsutil", "pdns-server")?;
        need("sqlite3", "sqlite3")?;
        let dir = temp_dir("pdns")?;
        let db = dir.join("pdns.sqlite3");
        let schema = std::fs::read("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")
            .context("the sqlite schema of pdns-backend-sqlite3")?;
        let mut sqlite = Command::new("sqlite3")
            .arg(&db)
            .stdin(Stdio::piped())
            .spawn()
            .context("sqlite3")?;
        if let Some(mut stdin) = sqlite.stdin.take() {
            use std::io::Write as _;
            stdin.write_all(&schema)?;
        }
        anyhow::ensure!(sqlite.wait()?.success(), "sqlite3 could not create the pdns database");
        let (dns_port, api_port) = (free_port()?, free_port()?);
        let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
        let conf = format!(
            "launch=gsqlite3\ngsqlite3-database={db}\nlocal-address=127.0.0.1\nlocal-port={dns_port}\n\
             api=yes\napi-key={api_key}\nwebserver=yes\nwebserver-address=127.0.0.1\nwebserver-port={api_port}\n\
             webserver-allow-from=127.0.0.1\nsocket-dir={dir}\ndaemon=no\nguardian=no\ndisable-syslog=yes\n",
            db = db.display(),
            dir = dir.display(),
        );
        std::fs::write(dir.join("pdns.conf"), conf)?;
        // The zone, made the way an operator would.
        let made = Command::new("pdnsutil")
            .arg(format!("--config-dir={}", dir.display()))
            .args(["create-zone", zone, &format!("ns1.{zone}")])
            .output()
            .context("pdnsutil")?;
        anyhow::ensure!(
            made.status.success(),
            "pdnsutil create-zone {zone}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let log = std::fs::File::create(dir.join("pdns.log"))?;
        let mut child = Command::new("pdns_server")
            .arg(format!("--config-dir={}", dir.display()))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("pdns_server")?;
        let api_url = format!("http://127.0.0.1:{api_port}");
        let servers = format!("{api_url}/api/v1/servers/localhost");
        wait_http(&servers, Some(("X-API-Key", &api_key)), "pdns_server", &mut child).await?;
        Ok(Self {
            child,
            dir,
            api_url,
            api_key,
            dns_port,
            zone: zone.to_string(),
        })
    }

    /// The A records of `name`, asked over UDP like any resolver would.
    pub fn query_a(&self, name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
        query_a(SocketAddr::from(([127, 0, 0, 1], self.dns_port)), name)
    }

    /// The zone's records as the API lists them: (name, type, contents).
    pub async fn rrsets(&self) -> anyhow::Result<Vec<(String, String, Vec<String>)>> {
        let zone: serde_json::Value = client()
            .get(format!(
                "{}/api/v1/servers/localhost/zones/{}.",
                self.api_url, self.zone
            ))
            .header("X-API-Key", &self.api_key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut out = Vec::new();
        for r in zone["rrsets"].as_array().cloned().unwrap_or_default() {
            let contents = r["records"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c["content"].as_str().map(str::to_string))
                .collect();
            out.push((
                r["name"].as_str().unwrap_or_default().to_string(),
                r["type"].as_str().unwrap_or_default().to_string(),
                contents,
            ));
        }
        out.sort();
        Ok(out)
    }
}

impl Drop for PowerDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asks `server` for the A records of `name` over UDP (RFC 1035 §4), with recursion off.
pub fn query_a(server: SocketAddr, name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let id: u16 = rand_id();
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
    for label in name.trim_end_matches('.').split('.') {
        anyhow::ensure!(!label.is_empty() && label.len() < 64, "bad name {name}");
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0x00, 0x00, 0x01, 0x00, 0x01]);
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    socket.send_to(&q, server)?;
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf)?;
    let r = &buf[..n];
    anyhow::ensure!(n >= 12 && r[0..2] == id.to_be_bytes(), "not our answer");
    let rcode = r[3] & 0x0f;
    let answers = u16::from_be_bytes([r[6], r[7]]);
    if rcode == 3 {
        return Ok(Vec::new()); // NXDOMAIN
    }
    anyhow::ensure!(rcode == 0, "DNS rcode {rcode}");
    // Skip the question, then read the answers.
    let mut i = 12;
    i = skip_name(r, i)? + 4;
    let mut out = Vec::new();
    for _ in 0..answers {
        i = skip_name(r, i)?;
        anyhow::ensure!(i + 10 <= n, "truncated answer");
        let kind = u16::from_be_bytes([r[i], r[i + 1]]);
        let len = usize::from(u16::from_be_bytes([r[i + 8], r[i + 9]]));
        i += 10;
        anyhow::ensure!(i + len <= n, "truncated record");
        if kind == 1 && len == 4 {
            out.push(Ipv4Addr::new(r[i], r[i + 1], r[i + 2], r[i + 3]));
        }
        i += len;
    }
    Ok(out)
}

fn skip_name(r: &[u8], mut i: usize) -> anyhow::Result<usize> {
    loop {
        let len = *r.get(i).ok_or_else(|| anyhow::anyhow!("truncated name"))?;
        if len == 0 {
            return Ok(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Ok(i + 2); // a compression pointer ends the name
        }
        i += 1 + usize::from(len);
    }
}

fn rand_id() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_be_bytes([bytes[0], bytes[1]])
}

/// Caddy with its admin API and one HTTP server, `edge`, with no routes.
pub struct Caddy {
    child: Child,
    dir: PathBuf,
    /// The admin API, `http://127.0.0.1:<port>`.
    pub admin_url: String,
    /// The HTTP server's address.
    pub http_addr: SocketAddr,
}

impl Caddy {
    /// Starts `caddy run` with the admin API and the server `edge` on free ports.
    pub async fn start() -> anyhow::Result<Self> {
        need("caddy", "caddy")?;
        let dir = temp_dir("caddy")?;
        let (admin_port, http_port) = (free_port()?, free_port()?);
        let config = serde_json::json!({
            "admin": { "listen": format!("127.0.0.1:{admin_port}"), "config": { "persist": false } },
            "apps": { "http": { "servers": { "edge": {
                "listen": [format!("127.0.0.1:{http_port}")],
                "automatic_https": { "disable": true },
                "routes": [],
            }}}},
        });
        std::fs::write(dir.join("caddy.json"), serde_json::to_vec(&config)?)?;
        let home = dir.join("home");
        std::fs::create_dir_all(&home)?;
        let log = std::fs::File::create(dir.join("caddy.log"))?;
        let mut child = Command::new("caddy")
            .args(["run", "--config"])
            .arg(dir.join("caddy.json"))
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("caddy")?;
        let admin_url = format!("http://127.0.0.1:{admin_port}");
        wait_http(&format!("{admin_url}/config/"), None, "caddy", &mut child).await?;
        Ok(Self {
            child,
            dir,
            admin_url,
            http_addr: SocketAddr::from(([127, 0, 0, 1], http_port)),
        })
    }

    /// The routes of the server `edge`.
    pub async fn routes(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let v: serde_json::Value = client()
            .get(format!("{}/config/apps/http/servers/edge/routes", self.admin_url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// `GET /` through the proxy with `Host: host`: the status and body.
    pub async fn get(&self, host: &str) -> anyhow::Result<(u16, String)> {
        let r = client()
            .get(format!("http://{}/", self.http_addr))
            .header("Host", host)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A tiny HTTP backend on 127.0.0.1 that answers every request with 200 and `body`; it stands
/// in for a site's container. Runs until the runtime ends.
pub async fn http_backend(body: &'static str) -> anyhow::Result<SocketAddr> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}
