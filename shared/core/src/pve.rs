//! The PVE client of a process, built from its `[pve]` settings.

use pvefleet_proxmox::client::{Auth, ClientSettings, PveClient, TlsMode};

use crate::config::{PveSettings, PveTls};

/// Builds a PVE client from the settings; says which setting is missing when one is.
pub fn client(s: &PveSettings) -> anyhow::Result<PveClient> {
    let auth = match (&s.token_id, &s.token_secret, &s.user, &s.password) {
        (Some(id), Some(secret), _, _) => Auth::Token {
            id: id.clone(),
            secret: secret.expose().to_string(),
        },
        (_, _, Some(user), Some(password)) => Auth::Password {
            user: user.clone(),
            password: password.expose().to_string(),
        },
        _ => anyhow::bail!(
            "no Proxmox credentials: set pve.token_id and pve.token_secret (or pve.user and pve.password)"
        ),
    };
    let tls = match s.tls {
        PveTls::Verified => TlsMode::Verified,
        PveTls::CaFile => TlsMode::CaFile(
            s.ca_file
                .clone()
                .ok_or_else(|| anyhow::anyhow!("pve.tls = \"ca-file\" needs pve.ca_file"))?,
        ),
        PveTls::Fingerprint => TlsMode::Fingerprint(
            s.fingerprint
                .clone()
                .ok_or_else(|| anyhow::anyhow!("pve.tls = \"fingerprint\" needs pve.fingerprint"))?,
        ),
        PveTls::Insecure => TlsMode::Insecure,
    };
    Ok(PveClient::new(ClientSettings {
        url: s.url.clone(),
        auth,
        tls,
        request_timeout: s.request_timeout,
        task_timeout: s.task_timeout,
        read_retries: s.read_retries,
    })?)
}
