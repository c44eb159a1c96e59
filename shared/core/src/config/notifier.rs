//! Notifier settings (`[notifier]`): the channels (SMTP, webhooks, ntfy, Alertmanager), who the
//! operators are, the routes from events to channels, and how often a firing alert is repeated.
//!
//! Secrets are never in this file: each is read from a file named here (`password_file`,
//! `secret_file`, `token_file`, `owner_webhook_key_file`), and never logged.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP, upgraded with STARTTLS (required).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// No TLS at all: for a relay on the same host or a test server only.
    None,
}

/// The SMTP server mail goes through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpSettings {
    /// Host; empty: no e-mail.
    pub host: String,
    /// Port; 0: the usual one for `security` (587, 465, 25).
    pub port: u16,
    /// `starttls`, `tls` or `none`.
    pub security: SmtpSecurity,
    /// User name for AUTH; empty: none.
    pub username: String,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// The sender, such as `pvefleet <fleet@example.org>`.
    pub from: String,
    /// A CA bundle (PEM) trusted for the server's certificate, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Time allowed for one delivery.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// A webhook endpoint, signed per Standard Webhooks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// A name for routes and listings (`ops`).
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// File holding the signing secret, `whsec_<base64>`.
    pub secret_file: Option<PathBuf>,
}

/// An ntfy topic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NtfySettings {
    /// The topic URL, such as `https://ntfy.example.org/fleet`; empty: no ntfy.
    pub url: String,
    /// File holding an access token, when the topic needs one.
    pub token_file: Option<PathBuf>,
}

/// Where the operators' notices go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperatorChannels {
    /// E-mail addresses.
    pub email: Vec<String>,
    /// Webhook endpoints.
    pub webhooks: Vec<WebhookEndpoint>,
    /// An ntfy topic.
    pub ntfy: NtfySettings,
    /// Alertmanager's base URL (`http://alertmanager:9093`); alerts go to its v2 API.
    pub alertmanager_url: String,
}

/// A route: which events go where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyRoute {
    /// Event types, exact or with a trailing `*` (`saga.*`).
    pub events: Vec<String>,
    /// Severities it takes (`critical`, `warning`, `info`); empty: all.
    pub severities: Vec<String>,
    /// `operator` (the operator channels) or `owner` (the site owner's contacts).
    pub audience: String,
    /// Channels: `email`, `webhook`, `ntfy`, `alertmanager`.
    pub channels: Vec<String>,
}

impl Default for NotifyRoute {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            severities: Vec::new(),
            audience: "operator".into(),
            channels: Vec::new(),
        }
    }
}

/// The notifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierSettings {
    /// SMTP.
    pub smtp: SmtpSettings,
    /// The operators' channels.
    pub operator: OperatorChannels,
    /// Routes; empty: the built-in ones (README: notifier).
    pub routes: Vec<NotifyRoute>,
    /// A raised alert for the same subject and resource is not sent again within this.
    #[serde(with = "humantime_serde")]
    pub alert_resend_interval: Duration,
    /// A folder of templates overriding the built-in ones (`<event>.subject`, `.txt`, `.html`).
    pub templates_dir: Option<PathBuf>,
    /// File holding the key owners' webhook secrets are derived from.
    pub owner_webhook_key_file: Option<PathBuf>,
    /// The console's base URL, for links in notices; empty: none.
    pub console_url: String,
    /// The scheme sites are served over, for their URL in notices.
    pub site_scheme: String,
}

impl Default for NotifierSettings {
    fn default() -> Self {
        Self {
            smtp: SmtpSettings {
                timeout: Duration::from_secs(30),
                ..SmtpSettings::default()
            },
            operator: OperatorChannels::default(),
            routes: Vec::new(),
            alert_resend_interval: Duration::from_secs(3600),
            templates_dir: None,
            owner_webhook_key_file: None,
            console_url: String::new(),
            site_scheme: "https".into(),
        }
    }
}
