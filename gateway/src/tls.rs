//! TLS for the HTTPS listener (rustls with the ring provider, or aws-lc-rs
//! with the `aws-lc-rs` feature: see [`provider`]): TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`, certificate chain and key from PEM
//! files, and session resumption ([`Resumption`]). Also development
//! certificates (rcgen), never for production.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Why the TLS configuration could not be built; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable or holds no usable PEM block.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the pair (for instance, the key does not match).
    #[error("certificate and key rejected: {0}")]
    Rejected(#[from] rustls::Error),
    /// Generating a development certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn file_error(path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Reads a PEM certificate chain (leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, format!("no usable private key ({e})")))
}

/// Stateful sessions kept for clients that resume by session id (TLS 1.2
/// clients without ticket support): a few hundred bytes each.
pub const SESSION_CACHE: usize = 10_000;

/// Session resumption, shared by every worker (one `ServerConfig` serves
/// them all): stateless tickets for TLS 1.3 and 1.2, sealed with random
/// keys rotated every six hours (rustls's `Ticketer`), and a bounded
/// stateful cache
/// ([`SESSION_CACHE`] sessions). A reload keeps it while the new
/// certificate names the same server (an unchanged subjectAltName), so
/// clients keep resuming; a certificate for other names starts afresh, so
/// no client resumes a session it authenticated under other names.
#[derive(Clone)]
pub struct Resumption {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    cache: Arc<dyn rustls::server::StoresServerSessions>,
    /// The subjectAltName the sessions were made under.
    names: Option<Vec<u8>>,
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumption").finish_non_exhaustive()
    }
}

impl Resumption {
    fn new(names: Option<Vec<u8>>) -> Result<Self, TlsError> {
        let ticketer = ticketer()?;
        Ok(Self {
            ticketer,
            cache: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE),
            names,
        })
    }

    /// `previous` if it was made under the same names, else a fresh one.
    fn carried_over(previous: Option<&Self>, names: Option<Vec<u8>>) -> Result<Self, TlsError> {
        match previous {
            Some(p) if names.is_some() && p.names == names => Ok(p.clone()),
            _ => Self::new(names),
        }
    }

    /// Whether `self` and `other` share their keys and cache.
    #[cfg(test)]
    fn is_shared_with(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ticketer, &other.ticketer)
    }
}

/// The crypto provider: ring, unless built with `--features aws-lc-rs`.
/// Measured side by side (`bench/tls_provider.sh 5 6`, medians of five
/// rounds against nginx): resumed connections 1,338/s on ring and 1,361/s
/// on aws-lc-rs (1.26x and 1.28x nginx), full handshakes 423/s and 408/s
/// (1.18x and 1.13x): the same within the machine's noise. ring is the
/// default because it costs less: a 34 MB binary instead of 42 MB, and no
/// cmake or AWS-LC C build on a fresh machine. aws-lc-rs is there for
/// deployments that need its FIPS module or post-quantum key exchange.
pub fn provider() -> rustls::crypto::CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "aws-lc-rs"))]
    rustls::crypto::ring::default_provider()
}

/// The provider's ticketer: keys from the system's randomness, each
/// sealing new tickets for six hours, accepted for twelve.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(not(feature = "aws-lc-rs"))]
    rustls::crypto::ring::Ticketer::new()
}

/// The server configuration for `cert` and `key`, resuming sessions with
/// `previous`'s state when the certificate names the same server (see
/// [`Resumption`]); also returns the state it uses.
pub fn server_config(
    cert: &Path,
    key: &Path,
    previous: Option<&Resumption>,
) -> Result<(Arc<rustls::ServerConfig>, Resumption), TlsError> {
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    let names = subject_alt_names(&chain[0]).map(<[u8]>::to_vec);
    let resumption = Resumption::carried_over(previous, names)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = resumption.ticketer.clone();
    config.session_storage = resumption.cache.clone();
    Ok((Arc::new(config), resumption))
}

/// The value of a certificate's subjectAltName extension (the names it is
/// for), if it has one: found by its object identifier (2.5.29.17), then
/// read as DER (an optional `critical` flag, then an OCTET STRING).
fn subject_alt_names(der: &[u8]) -> Option<&[u8]> {
    const OID: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
    let at = der.windows(OID.len()).position(|w| w == OID)? + OID.len();
    let mut rest = &der[at..];
    if let Some((0x01, _, after)) = der_item(rest) {
        rest = after; // critical: BOOLEAN
    }
    match der_item(rest)? {
        (0x04, value, _) => Some(value),
        _ => None,
    }
}

/// One DER item: its tag, its content and what follows it.
fn der_item(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *bytes.first()?;
    let first = *bytes.get(1)?;
    let (len, start) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = bytes
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |len, b| len << 8 | usize::from(*b));
        (len, 2 + n)
    };
    let content = bytes.get(start..start.checked_add(len)?)?;
    Some((tag, content, &bytes[start + len..]))
}

/// A self-signed development certificate for `names` (DNS names or IP
/// addresses): `(certificate PEM, private key PEM)`.
pub fn self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// Writes a development certificate and key into `dir` as `cert.pem` and
/// `key.pem` (the key readable by the owner only).
pub fn write_self_signed(dir: &Path, names: &[String]) -> Result<(), TlsError> {
    let (cert, key) = self_signed(names)?;
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let key_path = dir.join("key.pem");
    std::fs::write(dir.join("cert.pem"), cert).map_err(|e| file_error(&dir.join("cert.pem"), e))?;
    std::fs::write(&key_path, key).map_err(|e| file_error(&key_path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| file_error(&key_path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_loads_with_alpn_h2_first() {
        let dir = tempfile::tempdir().expect("dir");
        write_self_signed(dir.path(), &["localhost".into()]).expect("generate");
        let (config, _) =
            server_config(&dir.path().join("cert.pem"), &dir.path().join("key.pem"), None).expect("valid");
        assert_eq!(config.alpn_protocols[0], b"h2");
        assert!(config.ticketer.enabled(), "session tickets are on");
    }

    #[test]
    fn bad_files_are_clear_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing.pem");
        let err = server_config(&missing, &missing, None).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let err = server_config(&garbage, &garbage, None).expect_err("garbage");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");

        write_self_signed(dir.path(), &["a".into()]).expect("generate");
        let other = dir.path().join("other");
        write_self_signed(&other, &["b".into()]).expect("generate");
        let err = server_config(&dir.path().join("cert.pem"), &other.join("key.pem"), None).expect_err("mismatch");
        assert!(err.to_string().contains("rejected"), "{err}");
    }

    fn pair(dir: &Path, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        write_self_signed(dir, &names).expect("generate");
        (dir.join("cert.pem"), dir.join("key.pem"))
    }

    #[test]
    fn resumption_survives_a_new_certificate_for_the_same_names_only() {
        let root = tempfile::tempdir().expect("dir");
        let (cert, key) = pair(&root.path().join("a"), &["api.example", "127.0.0.1"]);
        let (_, first) = server_config(&cert, &key, None).expect("valid");
        // Renewed: a new key and certificate for the same names.
        let (cert, key) = pair(&root.path().join("b"), &["api.example", "127.0.0.1"]);
        let (_, renewed) = server_config(&cert, &key, Some(&first)).expect("valid");
        assert!(
            renewed.is_shared_with(&first),
            "tickets issued before the renewal still resume"
        );
        // Another server's names: a fresh start.
        let (cert, key) = pair(&root.path().join("c"), &["other.example"]);
        let (_, other) = server_config(&cert, &key, Some(&renewed)).expect("valid");
        assert!(!other.is_shared_with(&renewed));
    }

    #[test]
    fn the_names_are_read_from_the_certificate() {
        let root = tempfile::tempdir().expect("dir");
        let (cert, _) = pair(root.path(), &["api.example"]);
        let der = load_certs(&cert).expect("certs").remove(0);
        let names = subject_alt_names(&der).expect("a subjectAltName");
        assert!(names.windows(11).any(|w| w == b"api.example"), "{names:?}");
        assert_eq!(subject_alt_names(b"no extension here"), None);
    }
}
