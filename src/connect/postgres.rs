//! Postgres: the driver's configuration from the URL, with `sslmode` as libpq reads it.

use tokio_postgres_rustls::MakeRustlsConnect;

use super::{client_config, SettingError, TlsFiles, Verify};

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

/// The driver's configuration (the URL without `sslmode`, `password` over the URL's) and
/// the TLS connector, `None` under `sslmode=disable`.
pub fn options(
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

/// The driver's own parse error can quote the input, password included: say less.
fn unparsable_url(error: &tokio_postgres::Error) -> String {
    let reason = error.to_string();
    if reason.contains("password") {
        "not a valid connection URL".to_owned()
    } else {
        format!("not a valid connection URL ({reason})")
    }
}

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
}
