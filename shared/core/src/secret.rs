//! A wrapper for secrets: it never prints its value, in Debug, Display or serialized config.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string. Use [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A printable form: a URL keeps everything but its password; anything else is redacted.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.has_host() => {
                if u.password().is_some() {
                    // set_password only fails for URLs that cannot have one, which has_host excludes.
                    let _ = u.set_password(Some("redacted"));
                }
                // Query parameters can carry credentials too (`?password=`, `?sslpassword=`).
                if u.query().is_some() {
                    let pairs: Vec<(String, String)> = u
                        .query_pairs()
                        .map(|(k, v)| {
                            let lower = k.to_ascii_lowercase();
                            let hide = ["pass", "secret", "token", "key"].iter().any(|w| lower.contains(w));
                            (k.into_owned(), if hide { "redacted".into() } else { v.into_owned() })
                        })
                        .collect();
                    u.query_pairs_mut().clear().extend_pairs(pairs);
                }
                u.to_string()
            }
            _ => "[redacted]".into(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted_everywhere() {
        let s = Secret::new("amqp://guest:hunter2@127.0.0.1:5672/%2f");
        for shown in [format!("{s}"), format!("{s:?}"), serde_json::to_string(&s).unwrap()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("127.0.0.1"), "{shown}");
        }
        assert_eq!(s.expose(), "amqp://guest:hunter2@127.0.0.1:5672/%2f");
    }

    #[test]
    fn credentials_in_the_query_are_redacted() {
        let s = Secret::new("postgres://app@db/x?password=hunter2&sslmode=require");
        let shown = s.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
    }

    #[test]
    fn plain_secrets_are_fully_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(s.to_string(), "[redacted]");
    }
}
