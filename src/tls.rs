//! TLS for both connections: rustls client configurations from a section's CA, client
//! certificate and key files, checking the server as Postgres' `sslmode` or `amqps` asks.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use lapin::tcp::{AMQPUriTcpExt, RustlsConnector};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

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
    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.section)
    }
}

/// Postgres `sslmode`, as libpq spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// How much is checked. As in libpq, `require` with a CA file checks the chain.
    pub fn verify(self, has_ca_file: bool) -> Verify {
        match self {
            Self::VerifyFull => Verify::Full,
            Self::VerifyCa => Verify::Chain,
            Self::Require if has_ca_file => Verify::Chain,
            Self::Disable | Self::Prefer | Self::Require => Verify::Nothing,
        }
    }

    /// The mode the driver knows: it only tells whether TLS is off, tried or required.
    pub fn driver_mode(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// Takes `sslmode` out of a `postgres://` URL's query (the driver rejects `verify-ca`
/// and `verify-full`): the URL without it, and the mode (`prefer` when absent).
pub fn split_sslmode(url: &str) -> Result<(String, SslMode), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), SslMode::Prefer));
    };
    let mut mode = SslMode::Prefer;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("sslmode=") {
            Some(value) => {
                mode = SslMode::parse(value).ok_or_else(|| {
                    format!(
                        "sslmode {value:?} is not one of disable, prefer, require, verify-ca, verify-full"
                    )
                })?
            }
            None => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, mode))
}

/// What connecting to Postgres takes: the driver's configuration and the TLS connector.
pub type PostgresOptions = (tokio_postgres::Config, Option<MakeRustlsConnect>);

/// What connecting to RabbitMQ takes: the URI and the TLS connector.
pub type AmqpOptions = (AMQPUri, Option<RustlsConnector>);

/// The driver's configuration (the URL without `sslmode`, `password` over the URL's) and
/// the TLS connector, `None` under `sslmode=disable`.
pub fn postgres(
    url: &str,
    password: Option<&str>,
    files: TlsFiles<'_>,
) -> Result<PostgresOptions, SettingError> {
    let (url, mode) = split_sslmode(url).map_err(|e| SettingError::new("postgres.url", e))?;
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| SettingError::new("postgres.url", unparsable_url(&e)))?;
    config.ssl_mode(mode.driver_mode());
    if let Some(password) = password {
        config.password(password);
    }
    let tls = match mode {
        SslMode::Disable => None,
        _ => Some(MakeRustlsConnect::new(client_config(
            files,
            mode.verify(files.ca_file.is_some()),
        )?)),
    };
    Ok((config, tls))
}

/// The URI (`password` over the URL's) and, for `amqps://`, the TLS connector, which
/// always checks the broker's certificate and name.
pub fn amqp(
    url: &str,
    password: Option<&str>,
    files: TlsFiles<'_>,
) -> Result<AmqpOptions, SettingError> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|_| SettingError::new("amqp.url", "not an amqp:// or amqps:// URL"))?;
    if let Some(password) = password {
        uri.authority.userinfo.password = password.to_owned();
    }
    let tls = match uri.scheme {
        AMQPScheme::AMQP => None,
        AMQPScheme::AMQPS => Some(RustlsConnector::from(client_config(files, Verify::Full)?)),
    };
    Ok((uri, tls))
}

/// The driver's own parse error can quote the input, password included: say less.
fn unparsable_url(error: &tokio_postgres::Error) -> String {
    let reason = error.to_string();
    if reason.contains("password") {
        "not a valid connection URL".to_owned()
    } else {
        format!("not a valid connection URL ({reason})")
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

/// Opens an AMQP connection to an `amqps://` broker: TCP, then the TLS handshake with
/// `connector` (which checks the server as configured), then AMQP's own.
pub async fn amqps_connection(
    uri: AMQPUri,
    connector: RustlsConnector,
    properties: ConnectionProperties,
) -> lapin::Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    let connect = async move |uri: AMQPUri, runtime| {
        let host = uri.authority.host.clone();
        let mut plain = uri;
        plain.scheme = AMQPScheme::AMQP;
        let stream = plain.connect_async(&runtime).await?;
        Ok(stream.into_rustls(&connector, &host).await?)
    };
    Connection::connector(uri, runtime, connect, properties).await
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, SettingError> {
    std::fs::read(path)
        .map_err(|e| SettingError::new(key, format!("cannot read {}: {e}", path.display())))
}

fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SettingError> {
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

/// Checks the server's certificate as configured, and says in a rejection which
/// setting decides: the CA file that did not sign it, or the host it does not name.
struct ServerCheck {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    verify: Verify,
    algorithms: WebPkiSupportedAlgorithms,
    trusted: String,
}

impl ServerCheck {
    fn new(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_the_url() {
        let cases = [
            ("postgres://h/db", "postgres://h/db", SslMode::Prefer),
            (
                "postgres://h/db?sslmode=verify-full",
                "postgres://h/db",
                SslMode::VerifyFull,
            ),
            (
                "postgres://h/db?application_name=x&sslmode=verify-ca&connect_timeout=3",
                "postgres://h/db?application_name=x&connect_timeout=3",
                SslMode::VerifyCa,
            ),
            (
                "postgres://h/db?sslmode=disable",
                "postgres://h/db",
                SslMode::Disable,
            ),
        ];
        for (url, stripped, mode) in cases {
            assert_eq!(
                split_sslmode(url).unwrap(),
                (stripped.to_owned(), mode),
                "{url}"
            );
        }
        assert!(split_sslmode("postgres://h/db?sslmode=verify")
            .unwrap_err()
            .contains("verify-full"));
    }

    #[test]
    fn what_each_mode_checks() {
        assert_eq!(SslMode::VerifyFull.verify(false), Verify::Full);
        assert_eq!(SslMode::VerifyCa.verify(true), Verify::Chain);
        assert_eq!(SslMode::Require.verify(true), Verify::Chain);
        assert_eq!(SslMode::Require.verify(false), Verify::Nothing);
        assert_eq!(SslMode::Prefer.verify(true), Verify::Nothing);
    }

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
