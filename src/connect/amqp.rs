//! RabbitMQ: the AMQP URI from the URL, and for `amqps://` the TLS connector.

use lapin::tcp::RustlsConnector;
use lapin::uri::{AMQPScheme, AMQPUri};

use super::{client_config, SettingError, TlsFiles, Verify};

/// What connecting to RabbitMQ takes: the URI and the TLS connector.
pub type AmqpOptions = (AMQPUri, Option<RustlsConnector>);

/// The URI (`password` over the URL's) and, for `amqps://`, the TLS connector, which
/// always checks the broker's certificate and name.
pub fn options(
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
