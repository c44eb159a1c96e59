//! TLS to Proxmox: verified by default, or a CA file, or a SHA-256 fingerprint pin for
//! self-signed clusters, or (only when asked, with a warning) no verification.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How the server certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Against the system's trusted roots.
    #[default]
    Verified,
    /// Against the CA certificates in a PEM file (e.g. the cluster's `pve-root-ca.pem`).
    CaFile(PathBuf),
    /// The server certificate's SHA-256 fingerprint must equal this (`AA:BB:...`, as PVE shows it).
    Fingerprint(String),
    /// No verification at all. Logged as a warning on every client built.
    Insecure,
}

/// Parses a fingerprint `AA:BB:..` (or plain hex) into 32 bytes.
pub fn parse_fingerprint(text: &str) -> Option<Vec<u8>> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok())
        .collect()
}

/// Our crypto provider (ring), installed once as the process default.
pub fn provider() -> Arc<CryptoProvider> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Fails only if another provider is installed already; then that one is used by reqwest.
    let _ = CryptoProvider::install_default((*provider).clone());
    provider
}

/// Accepts exactly one certificate, by its SHA-256 fingerprint; signatures are still checked.
#[derive(Debug)]
pub struct FingerprintVerifier {
    sha256: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl FingerprintVerifier {
    /// A verifier for `sha256` (32 bytes).
    pub fn new(sha256: Vec<u8>, provider: Arc<CryptoProvider>) -> Self {
        Self { sha256, provider }
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if digest.as_ref() == self.sha256.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server certificate does not match the pinned SHA-256 fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "AB".repeat(32);
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(parse_fingerprint(&hex), Some(vec![0xAB; 32]));
        assert_eq!(parse_fingerprint(&colons.join(":")), Some(vec![0xAB; 32]));
        assert_eq!(parse_fingerprint("AB:CD"), None);
        assert_eq!(parse_fingerprint(&"ZZ".repeat(32)), None);
    }
}
