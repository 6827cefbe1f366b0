//! Checking the server's certificate as configured.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use super::{read_certificates, SettingError, TlsFiles, Verify};

/// Checks the server's certificate as configured, and says in a rejection which
/// setting decides: the CA file that did not sign it, or the host it does not name.
pub(super) struct ServerCheck {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    verify: Verify,
    algorithms: WebPkiSupportedAlgorithms,
    trusted: String,
}

impl ServerCheck {
    pub(super) fn new(
        files: TlsFiles<'_>,
        verify: Verify,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, SettingError> {
        let ca_key = files.key("ca_file");
        let mut roots = RootCertStore::empty();
        let trusted = match files.ca_file {
            Some(path) => {
                let (added, _) = roots.add_parsable_certificates(read_certificates(&ca_key, path)?);
                if added == 0 {
                    return Err(SettingError::new(
                        ca_key,
                        format!("{}: no usable CA certificate", path.display()),
                    ));
                }
                format!("the CA in `{ca_key}` ({})", path.display())
            }
            None => {
                if verify != Verify::Nothing {
                    let system = rustls_native_certs::load_native_certs();
                    // Unreadable entries of the system store matter only when none is left.
                    if let (true, Some(error)) = (system.certs.is_empty(), system.errors.first()) {
                        return Err(SettingError::new(
                            &ca_key,
                            format!("not set, and the system CAs: {error}"),
                        ));
                    }
                    roots.add_parsable_certificates(system.certs);
                }
                format!("a system CA (`{ca_key}` is not set)")
            }
        };
        let webpki = match verify {
            Verify::Nothing => None,
            Verify::Full | Verify::Chain => Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| SettingError::new(&ca_key, format!("no CA to trust: {e}")))?,
            ),
        };
        Ok(Self {
            webpki,
            verify,
            algorithms: provider.signature_verification_algorithms,
            trusted,
        })
    }

    fn rejected(&self, problem: &CertificateError) -> rustls::Error {
        let advice = match problem {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "connect by a host name the certificate holds".to_owned()
            }
            _ => format!("it must be signed by {}", self.trusted),
        };
        rustls::Error::Other(OtherError(Arc::new(Rejected(format!(
            "server certificate rejected: {problem}; {advice}"
        )))))
    }
}

impl fmt::Debug for ServerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCheck")
            .field("verify", &self.verify)
            .field("trusted", &self.trusted)
            .finish()
    }
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(verified) => Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.verify == Verify::Chain => Ok(ServerCertVerified::assertion()),
            Err(rustls::Error::InvalidCertificate(problem)) => Err(self.rejected(&problem)),
            Err(other) => Err(other),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why the server's certificate was refused, with the setting that decides.
#[derive(Debug)]
struct Rejected(String);

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rejected {}
