//! TLS for the HTTPS listener (rustls with the ring provider): TLS 1.2 and
//! 1.3 only, ALPN `h2` then `http/1.1`, certificate chain and key from PEM
//! files. Also development certificates (rcgen), never for production.

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

/// The server configuration for `cert` and `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
        let config = server_config(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).expect("valid");
        assert_eq!(config.alpn_protocols[0], b"h2");
    }

    #[test]
    fn bad_files_are_clear_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing.pem");
        let err = server_config(&missing, &missing).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let err = server_config(&garbage, &garbage).expect_err("garbage");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");

        write_self_signed(dir.path(), &["a".into()]).expect("generate");
        let other = dir.path().join("other");
        write_self_signed(&other, &["b".into()]).expect("generate");
        let err = server_config(&dir.path().join("cert.pem"), &other.join("key.pem")).expect_err("mismatch");
        assert!(err.to_string().contains("rejected"), "{err}");
    }
}
