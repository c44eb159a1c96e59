//! `pvefleet init-secrets DIR`: the secrets a compose stack reads, made in the right format;
//! and `pvefleet health URL`, a healthcheck that needs no curl in the image.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;

/// 32 random bytes from the system's generator (`/dev/urandom`).
fn random32() -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
    Ok(key)
}

/// Writes `text` to `path` unless it exists; says which. Mode 0644 in a 0700 directory: the
/// directory keeps other users of this machine out, and the containers, which run as their
/// own user and get each file bind-mounted, can read it.
fn write_new(path: &Path, text: &str, what: &str) -> anyhow::Result<bool> {
    if path.exists() {
        println!("kept     {}  ({what})", path.display());
        return Ok(false);
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        open.mode(0o644);
    }
    let mut f = open
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    println!("created  {}  ({what})", path.display());
    Ok(true)
}

/// Makes each missing secret in `dir`; checks the installer key that is there.
pub fn init(dir: &Path, demo: bool) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("cannot restrict {}: {e}", dir.display()))?;
    }
    let b64 = |k: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    let key = dir.join("installer-secrets-key");
    write_new(
        &key,
        &format!("{}\n", b64(random32()?)),
        "seals sites' credentials in Postgres",
    )?;
    // One that was there must be a key: a malformed one would stop the installer.
    let text = std::fs::read_to_string(&key)?;
    if let Err(e) = pvefleet_core::site_secrets::SecretBox::from_base64(&text) {
        eprintln!("error: {}: {e:#}", key.display());
        return Ok(ExitCode::FAILURE);
    }
    write_new(
        &dir.join("powerdns-api-key"),
        &format!("{}\n", hex(&random32()?)),
        "PowerDNS's api-key, read when DNS_PROVIDER=powerdns",
    )?;
    write_new(
        &dir.join("owner-webhook-key"),
        &format!("{}\n", b64(random32()?)),
        "derives each owner's webhook signing secret (the notifier)",
    )?;
    write_new(
        &dir.join("grafana-admin-password"),
        &format!("{}\n", hex(&random32()?[..16])),
        "Grafana's admin password (the monitoring profile)",
    )?;
    write_new(
        &dir.join("smtp-password"),
        "",
        "empty: the SMTP password, read when SMTP_USERNAME is set",
    )?;
    let pve = dir.join("pve-token-secret");
    if demo {
        write_new(
            &pve,
            &format!("{}\n", uuid::Uuid::from_bytes(random32()?[..16].try_into()?)),
            "the API token secret pvesim accepts",
        )?;
    } else if !pve.exists() {
        // Empty until the user fills it in: the services wait, not ready, naming it.
        write_new(&pve, "", "empty: put your PVE API token's secret here")?;
    } else {
        println!("kept     {}  (the PVE API token secret)", pve.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// GET `url`: exit 0 on 2xx, else 1 naming the status or the error.
pub async fn health(url: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    pvefleet_proxmox::client::tls::provider();
    let http = reqwest::Client::builder().timeout(timeout).build()?;
    match http.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            eprintln!("unhealthy: {url} answered {status}: {}", body.trim());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
