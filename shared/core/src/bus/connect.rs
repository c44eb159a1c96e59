//! Opening connections with a deadline, so a dead or black-holed broker is an error, not a hang.

use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};

use crate::config::BusSettings;

/// Why the bus could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker refused or dropped the connection.
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Broker {
        /// The URL, password redacted.
        url: String,
        /// lapin's error text, with any credentials in it redacted (an invalid URI is quoted
        /// whole in lapin's message, so the source error itself is not kept).
        reason: String,
    },
    /// The broker did not answer in time.
    #[error("connecting to RabbitMQ at {url} timed out after {timeout:?}")]
    Timeout {
        /// The URL, password redacted.
        url: String,
        /// The limit.
        timeout: Duration,
    },
}

/// Adds the heartbeat to the URI's query unless it sets one already.
pub fn uri_with_heartbeat(url: &str, heartbeat: u16) -> String {
    if url.contains("heartbeat=") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}heartbeat={heartbeat}")
}

/// Opens a connection named `name` (shown in the management UI) and one channel on it.
pub async fn open(settings: &BusSettings, name: &str) -> Result<(Connection, Channel), ConnectError> {
    let url = uri_with_heartbeat(settings.url.expose(), settings.heartbeat_secs);
    let redacted = settings.url.redacted();
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let attempt = async {
        let conn = Connection::connect(&url, props).await?;
        let ch = conn.create_channel().await?;
        Ok::<_, lapin::Error>((conn, ch))
    };
    match tokio::time::timeout(settings.connect_timeout, attempt).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(source)) => Err(ConnectError::Broker {
            reason: scrub(&source.to_string(), settings.url.expose(), &redacted),
            url: redacted,
        }),
        Err(_) => Err(ConnectError::Timeout {
            url: redacted,
            timeout: settings.connect_timeout,
        }),
    }
}

/// Removes the secret URL, and its password alone, from an error text.
fn scrub(text: &str, secret_url: &str, redacted: &str) -> String {
    let mut out = text.replace(secret_url, redacted);
    if let Ok(u) = url::Url::parse(secret_url)
        && let Some(pw) = u.password().filter(|p| p.len() >= 3)
    {
        out = out.replace(pw, "redacted");
    }
    // A URL lapin could not parse as one (no scheme): hide whatever follows a colon before '@'.
    if let Some((userinfo, _)) = secret_url.split_once('@')
        && let Some((_, pw)) = userinfo.rsplit_once(':')
        && pw.len() >= 3
    {
        out = out.replace(pw, "redacted");
    }
    out
}

/// Closes `channel`, then its connection, bounded, for a clean stop: a connection closed under
/// an open channel makes lapin log the channel's close as a connection error.
pub async fn close_cleanly(channel: &Channel, conn: Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(2), channel.close(200, "pvefleet: shutdown".into())).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "pvefleet: shutdown".into())).await;
}

/// Closes a connection in the background, bounded, so a dead socket cannot hold up recovery.
pub fn close_in_background(conn: Connection) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "pvefleet: reconnecting".into())).await;
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_never_carry_the_password() {
        let url = "amqp://guest:s3cr3tpw@rabbit:5672/%2f";
        let text = format!("Invalid URL: '{url}?heartbeat=10'");
        let out = scrub(&text, url, "amqp://guest:redacted@rabbit:5672/%2f");
        assert!(!out.contains("s3cr3tpw"), "{out}");
        let schemeless = "guest:s3cr3tpw@rabbit:5672";
        let out = scrub(&format!("Invalid URL: '{schemeless}'"), schemeless, "[redacted]");
        assert!(!out.contains("s3cr3tpw"), "{out}");
    }
}
