//! `tessera cert DIR`: a certificate authority and a server certificate
//! signed by it, for `tessera-server --tls-cert DIR/server.pem --tls-key
//! DIR/server.key` and clients that trust `DIR/ca.pem`. For a quick start
//! and tests; a deployment with its own PKI uses its own certificates.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists: give an empty directory (nothing is overwritten)")]
    Exists(PathBuf),
    #[error("making the certificates: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("--days must be at least 1")]
    Days,
}

/// The files `create` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The CA certificate, for clients to trust.
    pub ca: PathBuf,
    /// The server's certificate and the CA's, for `--tls-cert`.
    pub cert: PathBuf,
    /// The server's private key (mode 600), for `--tls-key`.
    pub key: PathBuf,
}

/// Writes `ca.pem`, `server.pem` and `server.key` into `dir` (created if
/// missing): a new CA valid for `days` and a server certificate it signed
/// for `hosts` (DNS names or IP addresses). The CA's key is not kept: to
/// cover other hosts, make a new set. Refuses to overwrite any file.
pub fn create(dir: &Path, hosts: &[String], days: u32) -> Result<Files, Error> {
    if days == 0 {
        return Err(Error::Days);
    }
    let files = Files {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    for path in [&files.ca, &files.cert, &files.key] {
        if path.exists() {
            return Err(Error::Exists(path.clone()));
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(i64::from(days));

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // A name of its own: a client trusting another set's CA then finds no
    // issuer, rather than one of the same name whose signature fails.
    let ca_name = format!(
        "Tessera certificate authority {}",
        now.unix_timestamp_nanos()
    );
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (ca.not_before, ca.not_after) = (now, until);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(hosts.to_vec())?;
    server
        .distinguished_name
        .push(DnType::CommonName, "tessera-server");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    (server.not_before, server.not_after) = (now, until);
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &issuer)?;

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_new(&files.key, server_key.serialize_pem(), 0o600).map_err(io(&files.key))?;
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    write_new(&files.cert, chain, 0o644).map_err(io(&files.cert))?;
    write_new(&files.ca, ca_cert.pem(), 0o644).map_err(io(&files.ca))?;
    Ok(files)
}

/// Creates `path` (never replacing a file) with this mode and text, synced.
fn write_new(path: &Path, text: String, mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
