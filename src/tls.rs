//! TLS material for the proxy and the Prometheus client: loading PEM
//! certificate chains, private keys and CA bundles, and building rustls
//! configurations on the `ring` provider (pure Rust + asm, no C toolchain
//! beyond `cc`, no aws-lc).
//!
//! Server side (`chaos proxy --tls-cert/--tls-key`): one certificate chain
//! and key, ALPN `h2` then `http/1.1`. Client side (https upstreams,
//! https Prometheus): a CA bundle file when one is given (it then replaces
//! the system roots, like `curl --cacert`), otherwise the system's trust
//! store read through `rustls-native-certs` (so an operator's own CAs
//! installed in /etc/ssl/certs are trusted, which baked-in webpki roots
//! would miss). SNI and certificate verification use the URL's host.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// PEM files larger than this are not certificates or keys.
const PEM_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// ALPN protocol ids, most preferred first.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: crate::input_file::InputFileError },
    #[error("{}: not a PEM certificate file: {reason}", path.display())]
    BadCert { path: PathBuf, reason: String },
    #[error("{}: no certificate in the file (expected -----BEGIN CERTIFICATE-----)", path.display())]
    NoCert { path: PathBuf },
    #[error(
        "{}: no private key in the file (expected -----BEGIN PRIVATE KEY-----, \
         RSA PRIVATE KEY or EC PRIVATE KEY): {reason}",
        path.display()
    )]
    NoKey { path: PathBuf, reason: String },
    #[error("certificate {} and key {} do not form a usable pair: {source}", cert.display(), key.display())]
    Pair { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("{}: CA certificate rejected: {source}", path.display())]
    BadCa { path: PathBuf, source: rustls::Error },
    #[error("no CA certificates in the system trust store ({reason})")]
    NoSystemRoots { reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
}

/// The certificate chain and key a TLS-terminating proxy presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::input_file::read_limited(path, PEM_MAX_BYTES)
        .map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(
            |e| TlsError::BadCert { path: path.to_path_buf(), reason: e.to_string() },
        )?;
    if certs.is_empty() {
        return Err(TlsError::NoCert { path: path.to_path_buf() });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::NoKey { path: path.to_path_buf(), reason: e.to_string() })
}

/// The server configuration for client-facing TLS: ALPN offers `h2` and
/// `http/1.1`, so HTTP/2 clients get HTTP/2 without prior knowledge.
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Pair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(cfg))
}

/// The system trust store, read once per process (it is a few hundred
/// files on a typical host).
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    let r = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let reason = match found.errors.first() {
                Some(e) => e.to_string(),
                None => "none found; install ca-certificates or set SSL_CERT_FILE".into(),
            };
            return Err(reason);
        }
        Ok(Arc::new(roots))
    });
    r.clone().map_err(|reason| TlsError::NoSystemRoots { reason })
}

/// Trust anchors: the CA bundle file if given, else the system store.
fn roots(ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, TlsError> {
    let Some(path) = ca_file else { return system_roots() };
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|source| TlsError::BadCa { path: path.to_path_buf(), source })?;
    }
    Ok(Arc::new(roots))
}

/// A client configuration verifying servers against `ca_file` (or the
/// system roots), offering `alpn` (empty: no ALPN).
pub fn client_config(
    ca_file: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots(ca_file)?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The name to send as SNI and to verify the certificate against: the
/// URL's host (an IP address is verified against the certificate's IP
/// SANs and sent without SNI, as RFC 6066 requires).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string())
        .map_err(|_| TlsError::ServerName { host: host.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hosts_and_ip_literals_for_sni() {
        assert!(matches!(server_name("prom.internal"), Ok(ServerName::DnsName(_))));
        assert!(matches!(server_name("127.0.0.1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn refuses_files_without_pem_material_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "hello\n").unwrap();
        let e = load_certs(&p).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no certificate"), "{e}");
        let e = load_key(&p).unwrap_err().to_string();
        assert!(e.contains("no private key"), "{e}");
        let e = load_certs(&dir.path().join("missing.pem")).unwrap_err().to_string();
        assert!(e.contains("missing.pem") && e.contains("cannot open"), "{e}");
    }
}
