//! Sites' generated credentials (made by the installer), sealed in Postgres (`site_secrets`) with ChaCha20-Poly1305:
//! a fresh random nonce per row, the site id as associated data (so a row cannot be moved to
//! another site), the key from config. They are made once per site and read back on a
//! re-run, so a redelivered install uses the passwords the site already has. They never go
//! into messages or logs; `Credentials` has no `Debug` that shows them.

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A site's credentials.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    /// The WordPress admin's login.
    pub admin_user: String,
    /// The WordPress admin's password.
    pub admin_password: String,
    /// The database user's password.
    pub db_password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("admin_user", &self.admin_user)
            .field("admin_password", &"[redacted]")
            .field("db_password", &"[redacted]")
            .finish()
    }
}

/// The sealing key.
#[derive(Clone)]
pub struct SecretBox {
    key: std::sync::Arc<LessSafeKey>,
    rng: SystemRandom,
}

/// A password of `len` letters and digits, from the system's random source.
pub fn password(rng: &SystemRandom, len: usize) -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill(&mut buf)
            .map_err(|_| anyhow::anyhow!("no random bytes from the system"))?;
        // Rejection sampling keeps every character equally likely.
        let limit = 256 - (256 % ALPHABET.len());
        for b in buf {
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

impl SecretBox {
    /// From a base64 key of 32 bytes (`installer.secrets_key`).
    pub fn from_base64(key: &str) -> anyhow::Result<Self> {
        // Where the user put it, for the message: its file when it came from one.
        let from = std::env::var("PVEFLEET_INSTALLER__SECRETS_KEY_FILE")
            .map(|f| format!("installer.secrets_key (the file {f})"))
            .unwrap_or_else(|_| "installer.secrets_key".to_string());
        let make = "make one with `pvefleet init-secrets DIR` or `openssl rand -base64 32`";
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|e| anyhow::anyhow!("{from} is not base64 ({e}): {make}"))?;
        anyhow::ensure!(
            bytes.len() == 32,
            "{from} must be 32 bytes in base64, not {}: {make}",
            bytes.len()
        );
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| anyhow::anyhow!("bad key"))?;
        Ok(Self {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
            rng: SystemRandom::new(),
        })
    }

    /// The random source, for passwords.
    pub fn rng(&self) -> &SystemRandom {
        &self.rng
    }

    /// Seals `creds` for `site`: nonce, then ciphertext and tag.
    pub fn seal(&self, site: Uuid, creds: &Credentials) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no random bytes from the system"))?;
        let mut data = serde_json::to_vec(creds)?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(site.as_bytes()),
                &mut data,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(out)
    }

    /// Opens what `seal` made for `site`; fails for another site's row or another key.
    pub fn open(&self, site: Uuid, sealed: &[u8]) -> anyhow::Result<Credentials> {
        anyhow::ensure!(sealed.len() > NONCE_LEN, "sealed credentials are too short");
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(site.as_bytes()), &mut data)
            .map_err(|_| {
                anyhow::anyhow!("the credentials do not open with this key (another key, or another site's row)")
            })?;
        Ok(serde_json::from_slice(plain)?)
    }
}

/// The site's credentials: the stored ones, or new ones stored now. Two deliveries racing
/// meet on the primary key and both read back the one row.
pub async fn ensure(
    db: &deadpool_postgres::Pool,
    sbox: &SecretBox,
    site: Uuid,
    admin_user: &str,
) -> anyhow::Result<Credentials> {
    let client = db.get().await?;
    if let Some(row) = client
        .query_opt("SELECT sealed FROM site_secrets WHERE site_id = $1", &[&site])
        .await?
    {
        return sbox.open(site, row.get(0));
    }
    let fresh = Credentials {
        admin_user: admin_user.to_string(),
        admin_password: password(sbox.rng(), 24)?,
        db_password: password(sbox.rng(), 32)?,
    };
    let sealed = sbox.seal(site, &fresh)?;
    client
        .execute(
            "INSERT INTO site_secrets (site_id, sealed) VALUES ($1, $2) ON CONFLICT (site_id) DO NOTHING",
            &[&site, &sealed],
        )
        .await?;
    let row = client
        .query_one("SELECT sealed FROM site_secrets WHERE site_id = $1", &[&site])
        .await?;
    sbox.open(site, row.get(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> String {
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    }

    #[test]
    fn sealed_credentials_open_only_for_their_site_and_key() {
        let sbox = SecretBox::from_base64(&key()).unwrap();
        let creds = Credentials {
            admin_user: "admin".into(),
            admin_password: password(sbox.rng(), 24).unwrap(),
            db_password: password(sbox.rng(), 32).unwrap(),
        };
        assert_eq!(creds.admin_password.len(), 24);
        assert!(creds.db_password.chars().all(|c| c.is_ascii_alphanumeric()));
        let site = Uuid::now_v7();
        let sealed = sbox.seal(site, &creds).unwrap();
        assert!(
            !String::from_utf8_lossy(&sealed).contains(&creds.admin_password),
            "the password is not in the clear"
        );
        assert_eq!(sbox.open(site, &sealed).unwrap(), creds);
        assert!(
            sbox.open(Uuid::now_v7(), &sealed).is_err(),
            "another site's row does not open"
        );
        let other = SecretBox::from_base64(&base64::engine::general_purpose::STANDARD.encode([9u8; 32])).unwrap();
        assert!(other.open(site, &sealed).is_err(), "another key does not open it");
        assert!(!format!("{creds:?}").contains(&creds.admin_password), "Debug redacts");
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused_with_a_clear_message() {
        let e = SecretBox::from_base64("c2hvcnQ=").err().unwrap().to_string();
        assert!(e.contains("32 bytes"), "{e}");
    }
}
