//! Serving a simulator on a loopback port, over HTTP or HTTPS.

use crate::{Sim, SimConfig};

impl Sim {
    /// Serves a new simulator on an ephemeral loopback port, in the background.
    pub async fn spawn(config: SimConfig) -> std::io::Result<(Self, std::net::SocketAddr)> {
        Self::spawn_on(config, std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Serves a new simulator on `addr` (port 0: any free port), in the background.
    pub async fn spawn_on(
        config: SimConfig,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<(Self, std::net::SocketAddr)> {
        let sim = Self::new(config);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let router = sim.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "pvesim stopped.");
            }
        });
        Ok((sim, addr))
    }

    /// Serves a new simulator over HTTPS on an ephemeral loopback port, with the given PEM
    /// certificate chain and private key, as PVE serves its API.
    pub async fn spawn_tls(
        config: SimConfig,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> std::io::Result<(Self, std::net::SocketAddr)> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad(format!("key: {e}")))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad(e.to_string()))?;
        let sim = Self::new(config);
        let listener = TlsListener {
            tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls)),
        };
        let addr = listener.tcp.local_addr()?;
        let router = sim.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "pvesim stopped.");
            }
        });
        Ok((sim, addr))
    }
}

/// Accepts TCP connections and completes the TLS handshake; a failed handshake (a client that
/// does not trust the certificate) is dropped and the next connection accepted.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
