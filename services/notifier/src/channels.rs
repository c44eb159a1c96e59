//! The channels: e-mail over SMTP (lettre), webhooks signed per Standard Webhooks, ntfy, and
//! Alertmanager's v2 API. Each delivery is one call; an error says whether trying again can
//! help. Secrets are read from their files once, at start, and never logged.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use lettre::message::{Mailbox, MultiPart, header};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use pvefleet_core::config::{NotifierSettings, SmtpSecurity};
use serde_json::{Value, json};

use crate::render::Rendered;

/// Why a delivery did not go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth trying again (a server down, a 5xx, a timeout).
    Transient(String),
    /// Trying again will not help (a 4xx, an address refused, no such endpoint).
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient(m) | SendError::Permanent(m) => f.write_str(m),
        }
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

pub fn read_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {what} from {}: {e}", path.display()))?;
    let text = text.trim().to_string();
    anyhow::ensure!(!text.is_empty(), "{what} file {} is empty", path.display());
    Ok(text)
}

/// A Standard Webhooks signing key: `whsec_<base64>`, or any other text taken as the key bytes.
fn signing_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b| B64.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">` (Standard Webhooks).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(&signing_key(secret)) else {
        return String::new();
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// An owner's webhook secret, derived from the owner webhook key: `whsec_` and the base64 of
/// HMAC-SHA256(key, owner). Nothing per owner is stored; `pvefleet notify owner set` shows it.
pub fn owner_secret(key: &str, owner: &str) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(key.as_bytes()) else {
        return String::new();
    };
    mac.update(b"pvefleet-owner-webhook:");
    mac.update(owner.as_bytes());
    format!("whsec_{}", B64.encode(mac.finalize().into_bytes()))
}

/// The channels with their secrets and clients.
pub struct Channels {
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Option<Mailbox>,
    http: reqwest::Client,
    /// Operator webhooks: (name, url, secret).
    webhooks: Vec<(String, String, Option<String>)>,
    ntfy_token: Option<String>,
    owner_key: Option<String>,
}

impl Channels {
    /// Builds them from the settings, reading every secret file; a missing or unreadable file,
    /// a bad sender or a bad CA file is an error naming it.
    pub fn new(s: &NotifierSettings) -> anyhow::Result<Self> {
        let smtp = if s.smtp.host.is_empty() { None } else { Some(smtp(s)?) };
        let from = if s.smtp.host.is_empty() {
            None
        } else {
            Some(
                s.smtp
                    .from
                    .parse::<Mailbox>()
                    .map_err(|e| anyhow::anyhow!("notifier.smtp.from '{}' is not an address: {e}", s.smtp.from))?,
            )
        };
        let mut webhooks = Vec::new();
        for w in &s.operator.webhooks {
            anyhow::ensure!(!w.name.is_empty(), "notifier.operator.webhooks: each needs a name");
            let secret = match &w.secret_file {
                Some(p) => Some(read_secret(p, &format!("the secret of webhook '{}'", w.name))?),
                None => None,
            };
            webhooks.push((w.name.clone(), w.url.clone(), secret));
        }
        let ntfy_token = match &s.operator.ntfy.token_file {
            Some(p) => Some(read_secret(p, "the ntfy token")?),
            None => None,
        };
        let owner_key = match &s.owner_webhook_key_file {
            Some(p) => Some(read_secret(p, "the owner webhook key")?),
            None => None,
        };
        // reqwest is built without a default TLS provider: ring, as the PVE client uses.
        let _ = rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
        let http = reqwest::Client::builder()
            .timeout(s.smtp.timeout.max(Duration::from_secs(5)))
            .build()?;
        Ok(Self {
            smtp,
            from,
            http,
            webhooks,
            ntfy_token,
            owner_key,
        })
    }

    /// The signing secret of owner `owner`'s webhook, when an owner webhook key is set.
    pub fn owner_secret(&self, owner: &str) -> Option<String> {
        self.owner_key.as_deref().map(|k| owner_secret(k, owner))
    }

    /// Sends an e-mail; its Message-ID is the delivery's, so a copy is recognisable.
    pub async fn email(&self, id: &str, to: &str, r: &Rendered) -> Result<(), SendError> {
        let (Some(smtp), Some(from)) = (&self.smtp, &self.from) else {
            return Err(SendError::Permanent(
                "no SMTP server is configured (notifier.smtp.host)".into(),
            ));
        };
        let to: Mailbox = to
            .parse()
            .map_err(|e| SendError::Permanent(format!("'{to}' is not an address: {e}")))?;
        let domain = from.email.domain().to_string();
        let msg = lettre::Message::builder()
            .from(from.clone())
            .to(to)
            .subject(r.subject.clone())
            .message_id(Some(format!("<{id}@{domain}>")))
            .header(header::MIME_VERSION_1_0)
            .multipart(MultiPart::alternative_plain_html(r.text.clone(), r.html.clone()))
            .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))?;
        match smtp.send(msg).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("the SMTP server refused it: {e}"))),
            Err(e) => Err(SendError::Transient(format!("SMTP: {e}"))),
        }
    }

    /// The URL and secret of a webhook target: an operator endpoint's name, or `owner:<name>`
    /// with the owner's URL.
    pub fn webhook_target(&self, target: &str, owner_url: Option<&str>) -> Option<(String, Option<String>)> {
        match target.strip_prefix("owner:") {
            Some(owner) => owner_url.map(|u| (u.to_string(), self.owner_secret(owner))),
            None => self
                .webhooks
                .iter()
                .find(|(n, _, _)| n == target)
                .map(|(_, u, s)| (u.clone(), s.clone())),
        }
    }

    /// POSTs a Standard Webhooks message: `webhook-id` is the delivery's (the same on every
    /// try, so a receiver drops copies), signed when the endpoint has a secret.
    pub async fn webhook(&self, id: &str, url: &str, secret: Option<&str>, body: &Value) -> Result<(), SendError> {
        let body = serde_json::to_vec(body).map_err(|e| SendError::Permanent(e.to_string()))?;
        let ts = chrono::Utc::now().timestamp();
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string());
        if let Some(secret) = secret {
            req = req.header("webhook-signature", sign(secret, id, ts, &body));
        }
        answer(req.body(body).send().await, url)
    }

    /// Publishes to an ntfy topic: the subject as title, the text as message.
    pub async fn ntfy(&self, url: &str, severity: &str, event_type: &str, r: &Rendered) -> Result<(), SendError> {
        let priority = match severity {
            "critical" => "urgent",
            "warning" => "high",
            _ => "default",
        };
        let mut req = self
            .http
            .post(url)
            .header("Title", &r.subject)
            .header("Priority", priority)
            .header("Tags", format!("pvefleet,{severity},{}", event_type.replace('.', "_")));
        if let Some(t) = &self.ntfy_token {
            req = req.bearer_auth(t);
        }
        answer(req.body(r.text.clone()).send().await, url)
    }

    /// Posts an alert (firing, or resolved with `endsAt` now) to Alertmanager's v2 API.
    pub async fn alertmanager(
        &self,
        base: &str,
        labels: &serde_json::Map<String, Value>,
        resolved: bool,
        r: &Rendered,
        generator: &str,
    ) -> Result<(), SendError> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut alert = json!({
            "labels": labels,
            "annotations": { "summary": r.subject, "description": r.text },
            "generatorURL": generator,
        });
        if resolved {
            alert["endsAt"] = json!(now);
        } else {
            alert["startsAt"] = json!(now);
        }
        let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
        answer(self.http.post(&url).json(&json!([alert])).send().await, &url)
    }
}

/// A 2xx is delivered; a 4xx other than 408 and 429 is permanent; anything else is transient.
fn answer(res: Result<reqwest::Response, reqwest::Error>, url: &str) -> Result<(), SendError> {
    match res {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let code = r.status().as_u16();
            let msg = format!("{url} answered {code}");
            if (400..500).contains(&code) && code != 408 && code != 429 {
                Err(SendError::Permanent(msg))
            } else {
                Err(SendError::Transient(msg))
            }
        }
        Err(e) => Err(SendError::Transient(format!("{url}: {}", without_url(&e)))),
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        text = text.replace(u.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn smtp(s: &NotifierSettings) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let c = &s.smtp;
    let port = match (c.port, c.security) {
        (0, SmtpSecurity::Starttls) => 587,
        (0, SmtpSecurity::Tls) => 465,
        (0, SmtpSecurity::None) => 25,
        (p, _) => p,
    };
    let tls = || -> anyhow::Result<TlsParameters> {
        let mut b = TlsParameters::builder(c.host.clone());
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("cannot read notifier.smtp.ca_file {}: {e}", ca.display()))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("notifier.smtp.ca_file {} holds no PEM certificate: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        Ok(b.build_rustls()?)
    };
    let tls = match c.security {
        SmtpSecurity::Starttls => Tls::Required(tls()?),
        SmtpSecurity::Tls => Tls::Wrapper(tls()?),
        SmtpSecurity::None => Tls::None,
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host)
        .port(port)
        .tls(tls)
        .timeout(Some(c.timeout));
    if !c.username.is_empty() {
        let password = match &c.password_file {
            Some(p) => read_secret(p, "the SMTP password")?,
            None => anyhow::bail!("notifier.smtp.username is set but notifier.smtp.password_file is not"),
        };
        b = b.credentials(Credentials::new(c.username.clone(), password));
    }
    Ok(b.build())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's own example: this secret, id, timestamp and body
    /// sign to this signature.
    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = 1614265330;
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, ts, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_ne!(sign(secret, id, ts + 1, body), sign(secret, id, ts, body));
    }

    #[test]
    fn owner_secrets_differ_by_owner_and_stay_the_same() {
        assert_eq!(owner_secret("k", "alice"), owner_secret("k", "alice"));
        assert_ne!(owner_secret("k", "alice"), owner_secret("k", "bob"));
        assert!(owner_secret("k", "alice").starts_with("whsec_"));
    }
}
