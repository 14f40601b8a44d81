//! TLS for client connections (`--tls-cert`, `--tls-key`): rustls with the
//! ring provider, TLS 1.2 and 1.3, no client certificates. With it, every
//! client port (the shared one and each shard's) speaks only TLS; the
//! metrics endpoint stays plain HTTP.

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The server's TLS setup, built once at startup and shared by the shards.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

/// The crypto provider every TLS config of Tessera uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Loads a certificate chain (PEM, the server's certificate first) and
    /// its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading --tls-cert {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing --tls-cert {}", cert.display()))?;
        if chain.is_empty() {
            bail!("--tls-cert {} holds no certificate", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading --tls-key {}", key.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("--tls-cert and --tls-key do not make a usable pair")?;
        Ok(Tls {
            config: Arc::new(config),
        })
    }
}
