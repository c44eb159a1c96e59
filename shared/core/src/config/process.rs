//! Per-process settings: logs (`[telemetry]`), the ops HTTP listener (`[http]`) and the
//! consumer runner (`[worker]`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for a log shipper.
    Json,
}

/// Log settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub filter: String,
    /// Where spans go, over OTLP/HTTP (protobuf): the collector's traces URL, such as
    /// `http://otel-collector:4318/v1/traces`. Empty: no spans are exported.
    pub otlp_endpoint: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".into(),
            otlp_endpoint: String::new(),
        }
    }
}

/// The ops HTTP listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address for `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9000)),
        }
    }
}

/// Consumer runner settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Messages handled at once; the prefetch equals it.
    pub concurrency: u16,
    /// How long shutdown waits for in-flight handlers before closing.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            drain_timeout: Duration::from_secs(30),
        }
    }
}
