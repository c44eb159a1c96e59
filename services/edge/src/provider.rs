//! How a provider call ends: done, failed for good, or worth another try.
//!
//! Auth errors and requests the provider refuses (4xx) fail the step with the provider's
//! message; 429, 5xx, timeouts and connection errors retry through the worker's wait tiers.

use pvefleet_core::bus::HandlerError;

/// A provider call that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// Permanent: the step fails with this code and message.
    Fail { code: String, message: String },
    /// Transient: the command is tried again later.
    Retry(String),
}

impl ProviderError {
    /// Classifies an HTTP answer that was not a success, from `provider` (`powerdns`, ...).
    pub fn from_status(provider: &str, what: &str, status: u16, body: &str) -> Self {
        let detail = body_message(body);
        let message = format!("{provider} {what}: HTTP {status}: {detail}");
        match status {
            429 | 500..=599 => Self::Retry(message),
            401 | 403 => Self::Fail {
                code: format!("{provider}.auth"),
                message,
            },
            _ => Self::Fail {
                code: format!("{provider}.refused"),
                message,
            },
        }
    }

    /// Classifies a request that got no answer: always transient.
    pub fn from_transport(provider: &str, what: &str, e: &reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else {
            "request failed"
        };
        // reqwest's own message is only "error sending request"; the cause is in its sources.
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Retry(format!("{provider} {what}: {kind}: {chain}"))
    }
}

impl From<ProviderError> for HandlerError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Fail { code, message } => HandlerError::fail(code, message),
            ProviderError::Retry(message) => HandlerError::transient(message),
        }
    }
}

/// The provider's own error text from a JSON body (`{"error": ...}`), else the body, cut short.
fn body_message(body: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| {
        v.get("error")
            .and_then(|e| e.as_str().map(str::to_string))
            .or_else(|| v.get("message").and_then(|m| m.as_str().map(str::to_string)))
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_errors_fail_and_overload_retries() {
        assert!(matches!(
            ProviderError::from_status("powerdns", "upsert", 401, "Unauthorized"),
            ProviderError::Fail { code, .. } if code == "powerdns.auth"
        ));
        assert!(matches!(
            ProviderError::from_status("caddy", "route", 429, ""),
            ProviderError::Retry(_)
        ));
        assert!(matches!(
            ProviderError::from_status("caddy", "route", 503, "busy"),
            ProviderError::Retry(_)
        ));
        let refused = ProviderError::from_status(
            "powerdns",
            "upsert",
            422,
            r#"{"error":"RRset x.other.test. IN A: Name is out of zone"}"#,
        );
        assert_eq!(
            refused,
            ProviderError::Fail {
                code: "powerdns.refused".into(),
                message: "powerdns upsert: HTTP 422: RRset x.other.test. IN A: Name is out of zone".into()
            }
        );
    }
}
