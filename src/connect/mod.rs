//! What connecting takes, from plain values: the Postgres driver's configuration
//! ([`postgres`]), the AMQP URI ([`amqp`]), and rustls client configurations from a
//! section's CA, client certificate and key files, checking the server as Postgres'
//! `sslmode` or `amqps` asks ([`verify`]). Every problem is a [`SettingError`] naming its
//! key.

pub mod amqp;
pub mod postgres;
mod verify;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ClientConfig;

use self::verify::ServerCheck;

/// A setting that cannot be used, named by its key; the reason never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct SettingError {
    pub key: String,
    pub reason: String,
}

impl SettingError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Signed by a trusted CA and issued for the host connected to.
    Full,
    /// Signed by a trusted CA, whatever host it names.
    Chain,
    /// Encrypted, but anyone may answer (libpq's `prefer` and `require`).
    Nothing,
}

/// The TLS files of one settings section (`postgres` or `amqp`).
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    pub section: &'static str,
    pub ca_file: Option<&'a Path>,
    pub client_cert_file: Option<&'a Path>,
    pub client_key_file: Option<&'a Path>,
}

impl TlsFiles<'_> {
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.section)
    }
}

/// A rustls client configuration from `files`, checking the server as `verify` says.
/// Without a CA file, the system's CAs are trusted.
pub fn client_config(files: TlsFiles<'_>, verify: Verify) -> Result<ClientConfig, SettingError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let checker = ServerCheck::new(files, verify, &provider)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingError::new(files.section, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(checker));
    match (files.client_cert_file, files.client_key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = read_certificates(&files.key("client_cert_file"), cert)?;
            let key_der = read_private_key(&files.key("client_key_file"), key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| SettingError::new(files.key("client_key_file"), e.to_string()))
        }
        (Some(_), None) => Err(SettingError::new(
            files.key("client_key_file"),
            format!("required when `{}` is set", files.key("client_cert_file")),
        )),
        (None, Some(_)) => Err(SettingError::new(
            files.key("client_cert_file"),
            format!("required when `{}` is set", files.key("client_key_file")),
        )),
    }
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, SettingError> {
    std::fs::read(path)
        .map_err(|e| SettingError::new(key, format!("cannot read {}: {e}", path.display())))
}

pub(crate) fn read_certificates(
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SettingError> {
    let invalid = |reason: String| SettingError::new(key, format!("{}: {reason}", path.display()));
    let certificates = CertificateDer::pem_slice_iter(&read_file(key, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates ({e})")))?;
    if certificates.is_empty() {
        return Err(invalid("holds no PEM certificate".to_owned()));
    }
    Ok(certificates)
}

fn read_private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, SettingError> {
    // The parse error cannot quote the key: it names only the PEM section it expected.
    PrivateKeyDer::from_pem_slice(&read_file(key, path)?).map_err(|e| {
        SettingError::new(
            key,
            format!("{}: no usable PEM private key ({e})", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_name_their_key() {
        let missing = Path::new("/nonexistent/itrelay/ca.pem");
        let files = TlsFiles {
            section: "amqp",
            ca_file: Some(missing),
            client_cert_file: None,
            client_key_file: None,
        };
        let error = client_config(files, Verify::Full).unwrap_err();
        assert_eq!(error.key, "amqp.ca_file");
        assert!(error.reason.contains("cannot read"), "{error}");

        let half = TlsFiles {
            section: "postgres",
            ca_file: None,
            client_cert_file: Some(missing),
            client_key_file: None,
        };
        let error = client_config(half, Verify::Nothing).unwrap_err();
        assert_eq!(error.key, "postgres.client_key_file");
    }
}
