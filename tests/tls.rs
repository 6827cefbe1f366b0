//! TLS on both connections and passwords from files, against a Postgres instance this
//! test starts (SSL on, a CA of its own, only TLS connections with a password admitted)
//! and a TLS listener standing in for an `amqps://` broker.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::server::{as_postgres, pg_bin, running_as_root, wait_until_ready};
use common::*;
use itrelay::config::Settings;
use itrelay::postgres::PgSession;
use itrelay::route::Router;
use itrelay::sink::amqp::Publisher;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "itrelay-{what}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `content` to `name` in this directory.
    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.join(name);
        fs::write(&path, content).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("run command");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Certificates made with the `openssl` CLI: a CA; a server certificate it signed for
/// `localhost` only; a client certificate it signed for the database user [`CERT_USER`];
/// and another CA that signed nothing here.
struct Certs {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// The database user that logs in with its client certificate.
const CERT_USER: &str = "itrelay_cert";

impl Certs {
    fn generate(dir: &Path) -> Self {
        // Arguments separated by spaces; none contains one.
        let openssl = |args: &str| {
            run(Command::new("openssl")
                .current_dir(dir)
                .args(args.split_whitespace()))
        };
        let new_key = "-nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1";
        for ca in ["ca", "other-ca"] {
            openssl(&format!(
                "req -x509 -new {new_key} -keyout {ca}.key -out {ca}.crt -days 2 \
                 -subj /CN=itrelay-test-{ca} -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign"
            ));
        }
        for (name, subject, extensions) in [
            (
                "server",
                "localhost",
                "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth",
            ),
            ("client", CERT_USER, "extendedKeyUsage=clientAuth"),
        ] {
            openssl(&format!(
                "req -new {new_key} -keyout {name}.key -out {name}.csr -subj /CN={subject}"
            ));
            fs::write(
                dir.join(format!("{name}.ext")),
                format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}\n"),
            )
            .expect("write extensions");
            openssl(&format!(
                "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                 -out {name}.crt -extfile {name}.ext"
            ));
        }
        Self {
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A Postgres instance of this test: SSL on with [`Certs`], only `hostssl` connections
/// with a password admitted, stopped and removed on drop.
struct TlsPostgres {
    server: Child,
    port: u16,
    password: String,
    certs: Certs,
    dir: TempDir,
}

impl TlsPostgres {
    async fn start() -> Self {
        let dir = TempDir::new("tls-postgres");
        let certs = Certs::generate(&dir.0);
        let password = format!("pg-{}", uuid::Uuid::new_v4().simple());
        let password_file = dir.write("initdb-password", &password);
        if running_as_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir.0));
        }
        let data = dir.join("data");
        run(as_postgres(
            Command::new(pg_bin().join("initdb"))
                .current_dir(&dir.0)
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth-local=trust", "--no-sync"])
                .arg(format!("--pwfile={}", password_file.display())),
        ));
        fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n"
            ),
        )
        .expect("write pg_hba.conf");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = fs::File::create(dir.join("postgres.log")).expect("log file");
        let server = as_postgres(
            Command::new(pg_bin().join("postgres"))
                .current_dir(&dir.0)
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(&dir.0)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "ssl=on",
                    "-c",
                    "fsync=off",
                ])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", certs.server_cert.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", certs.server_key.display()))
                .arg("-c")
                .arg(format!("ssl_ca_file={}", certs.ca.display()))
                .stdout(Stdio::null())
                .stderr(log),
        )
        .spawn()
        .expect("start postgres");
        let mut instance = Self {
            server,
            port,
            password,
            certs,
            dir,
        };
        wait_until_ready(
            &mut instance.server,
            port,
            &instance.dir.join("postgres.log"),
        )
        .await;
        instance
    }

    /// The `ITRELAY__POSTGRES__*` variables for connecting by `host` under `sslmode`,
    /// trusting `ca`; the password comes from the environment.
    fn env(&self, host: &str, sslmode: &str, ca: &Path) -> Vec<(String, String)> {
        vec![
            (
                "ITRELAY__POSTGRES__URL".into(),
                format!(
                    "postgres://postgres@{host}:{}/postgres?sslmode={sslmode}",
                    self.port
                ),
            ),
            (
                "ITRELAY__POSTGRES__CA_FILE".into(),
                ca.display().to_string(),
            ),
            ("ITRELAY__POSTGRES__PASSWORD".into(), self.password.clone()),
        ]
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown, without waiting for clients.
        let _ = Command::new("kill")
            .args(["-INT", &self.server.id().to_string()])
            .status();
        let _ = self.server.wait();
    }
}

fn settings(vars: &[(String, String)]) -> Settings {
    Settings::load_with_env(None, Some(vars.iter().cloned().collect())).expect("settings")
}

fn pairs(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_with_the_right_ca_relays_an_event_over_tls() {
    let pg = TlsPostgres::start().await;
    let mut env = TestEnv::new().await;
    let tls_env = pg.env("localhost", "verify-full", &pg.certs.ca);

    let session = PgSession::connect(&env.settings(&pairs(&tls_env)).postgres)
        .await
        .expect("verify-full with the right CA connects");
    let ssl: bool = session
        .client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(ssl, "the session is encrypted");
    session
        .client
        .batch_execute(itrelay::sql::REFERENCE_SCHEMA)
        .await
        .expect("reference schema");
    itrelay::sql::install(&session.client, "it_events")
        .await
        .expect("install");
    session
        .client
        .batch_execute(&format!(
            "INSERT INTO it_vendors (vendor_id, organization_id, vendor_name)
                 VALUES ('{VENDOR}', '{ORG}', 'Acme Hardware')"
        ))
        .await
        .expect("seed vendor");

    env.start_relay(&pairs(&tls_env));
    session
        .client
        .batch_execute(&format!(
            "INSERT INTO it_assets (organization_id, asset_tag, asset_name, asset_type, purchase_cost, purchase_date, vendor_id)
                 VALUES ('{ORG}', 'TLS-1', 'Monitor', 'monitor', 300, '2026-03-02', '{VENDOR}')"
        ))
        .await
        .expect("business write");
    let exchange = env.exchange("FA");
    let deadline = tokio::time::Instant::now() + WAIT;
    let received = loop {
        let messages = env.drain(&exchange).await;
        if !messages.is_empty() {
            break messages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event relayed over TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body["asset_tag"], "TLS-1");
    assert_eq!(received[0].body["vendor_name"], "Acme Hardware");
    env.stop_relay().await;

    // verify-ca checks the chain only: by IP address, which the certificate does not
    // name, it connects all the same.
    let by_ip = pg.env("127.0.0.1", "verify-ca", &pg.certs.ca);
    PgSession::connect(&settings(&by_ip).postgres)
        .await
        .expect("verify-ca ignores the host name");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_or_host_name_is_refused_with_the_setting_named() {
    let pg = TlsPostgres::start().await;

    let wrong_ca = pg.env("localhost", "verify-full", &pg.certs.other_ca);
    let error = PgSession::connect(&settings(&wrong_ca).postgres)
        .await
        .err()
        .expect("a certificate of another CA is refused")
        .to_string();
    assert!(error.contains("`postgres.ca_file`"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");

    let by_ip = pg.env("127.0.0.1", "verify-full", &pg.certs.ca);
    let error = PgSession::connect(&settings(&by_ip).postgres)
        .await
        .err()
        .expect("verify-full checks the host name")
        .to_string();
    assert!(error.contains("not valid for name"), "{error}");
    assert!(error.contains("host name"), "{error}");

    // The server admits TLS connections only: without TLS there is no way in.
    let plain = pg.env("localhost", "disable", &pg.certs.ca);
    let error = PgSession::connect(&settings(&plain).postgres)
        .await
        .err()
        .expect("plain connections are refused")
        .to_string();
    assert!(error.contains("no encryption"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_logs_in_without_a_password() {
    let pg = TlsPostgres::start().await;
    let admin =
        PgSession::connect(&settings(&pg.env("localhost", "verify-full", &pg.certs.ca)).postgres)
            .await
            .expect("connect with the password");
    admin
        .client
        .batch_execute(&format!("CREATE ROLE {CERT_USER} LOGIN"))
        .await
        .expect("create the certificate's user");
    let url = (
        "ITRELAY__POSTGRES__URL".to_owned(),
        format!(
            "postgres://{CERT_USER}@localhost:{}/postgres?sslmode=verify-full",
            pg.port
        ),
    );
    let ca = (
        "ITRELAY__POSTGRES__CA_FILE".to_owned(),
        pg.certs.ca.display().to_string(),
    );
    let with_certificate = [
        url.clone(),
        ca.clone(),
        (
            "ITRELAY__POSTGRES__CLIENT_CERT_FILE".to_owned(),
            pg.certs.client_cert.display().to_string(),
        ),
        (
            "ITRELAY__POSTGRES__CLIENT_KEY_FILE".to_owned(),
            pg.certs.client_key.display().to_string(),
        ),
    ];
    let session = PgSession::connect(&settings(&with_certificate).postgres)
        .await
        .expect("the client certificate is accepted");
    let user: String = session
        .client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0);
    assert_eq!(user, CERT_USER);

    let error = PgSession::connect(&settings(&[url, ca]).postgres)
        .await
        .err()
        .expect("no certificate, no login")
        .to_string();
    assert!(error.contains("certificate"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_never_prints_a_password() {
    let pg = TlsPostgres::start().await;
    // Its exchange prefix, for what `check` declares, and their removal.
    let env = TestEnv::new().await;
    let wrong_pg = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let wrong_amqp = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let secrets = TempDir::new("secrets");
    let check = |pg_password_file: &Path, amqp_password: &str| {
        let mut vars: HashMap<String, String> = pg
            .env("localhost", "verify-full", &pg.certs.ca)
            .into_iter()
            .collect();
        vars.remove("ITRELAY__POSTGRES__PASSWORD");
        vars.insert(
            "ITRELAY__POSTGRES__PASSWORD_FILE".into(),
            pg_password_file.display().to_string(),
        );
        vars.insert(
            "ITRELAY__AMQP__URL".into(),
            "amqp://guest@127.0.0.1:5672/%2f".into(),
        );
        vars.insert("ITRELAY__AMQP__PASSWORD".into(), amqp_password.into());
        vars.insert("ITRELAY__AMQP__EXCHANGE_PREFIX".into(), env.prefix.clone());
        let output = Command::new(env!("CARGO_BIN_EXE_itrelay"))
            .arg("check")
            .env_clear()
            .env("RUST_LOG", "debug")
            .envs(&vars)
            .output()
            .expect("run itrelay check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };

    let wrong_file = secrets.write("wrong-password", &format!("{wrong_pg}\n"));
    let (code, text) = check(&wrong_file, &wrong_amqp);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL  postgres"), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("FAIL  rabbitmq"), "{text}");
    for secret in [&wrong_pg, &wrong_amqp, &pg.password] {
        assert!(
            !text.contains(secret.as_str()),
            "a password was printed: {text}"
        );
    }

    // The right password, from a file with a trailing newline: the database is reached.
    let right_file = secrets.write("password", &format!("{}\n", pg.password));
    let (_, text) = check(&right_file, "guest");
    assert!(text.contains("ok    postgres"), "{text}");
    assert!(text.contains("ok    rabbitmq"), "{text}");
    assert!(
        !text.contains(&pg.password),
        "a password was printed: {text}"
    );
}

#[test]
fn unreadable_files_stop_the_start_naming_their_key() {
    let missing = "/nonexistent/itrelay/file";
    let cases = [
        (
            vec![
                (
                    "ITRELAY__AMQP__URL",
                    "amqps://guest:guest@localhost:5671/%2f",
                ),
                ("ITRELAY__AMQP__CA_FILE", missing),
            ],
            "amqp.ca_file",
        ),
        (
            vec![
                (
                    "ITRELAY__POSTGRES__URL",
                    "postgres://postgres@localhost/postgres?sslmode=verify-full",
                ),
                ("ITRELAY__POSTGRES__CA_FILE", missing),
            ],
            "postgres.ca_file",
        ),
        (
            vec![("ITRELAY__POSTGRES__PASSWORD_FILE", missing)],
            "postgres.password_file",
        ),
        (
            vec![("ITRELAY__AMQP__PASSWORD_FILE", missing)],
            "amqp.password_file",
        ),
    ];
    for (vars, key) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_itrelay"))
            .arg("check")
            .env_clear()
            .envs(vars)
            .output()
            .expect("run itrelay check");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "{key}: {stderr}");
        assert!(stderr.contains("cannot read"), "{key}: {stderr}");
    }
}

/// A TLS listener in place of an `amqps://` broker: completes the handshake (asking for
/// a client certificate signed by `client_ca`, if given) and reports the first 8 bytes
/// the client sends (the AMQP protocol header), or the handshake error.
async fn tls_listener(
    certs: &Certs,
    client_ca: Option<&Path>,
) -> (u16, tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>) {
    let pem_certificates = |path: &Path| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path)
            .expect("certificate file")
            .collect::<Result<_, _>>()
            .expect("PEM certificates")
    };
    let key = PrivateKeyDer::from_pem_file(&certs.server_key).expect("server key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(pem_certificates(ca));
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(pem_certificates(&certs.server_cert), key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let outcome = match acceptor.accept(stream).await {
                Ok(mut tls) => {
                    let mut header = vec![0; 8];
                    tls.read_exact(&mut header)
                        .await
                        .map(|_| header)
                        .map_err(|e| e.to_string())
                }
                Err(error) => Err(error.to_string()),
            };
            let _ = sender.send(outcome).await;
        }
    });
    (port, receiver)
}

/// Connects a publisher to the listener on `port` with these `ITRELAY__AMQP__*` files;
/// the error it ends with (there is no broker behind the TLS).
async fn amqps_error(port: u16, files: &[(&str, &Path)]) -> String {
    let mut vars = vec![(
        "ITRELAY__AMQP__URL".to_owned(),
        format!("amqps://guest:guest@localhost:{port}/%2f"),
    )];
    vars.extend(
        files
            .iter()
            .map(|(key, path)| ((*key).to_owned(), path.display().to_string())),
    );
    let settings = settings(&vars);
    let router = Router::from_settings(&settings);
    tokio::time::timeout(
        WAIT,
        Publisher::connect(&settings.amqp, &router, settings.confirm_timeout()),
    )
    .await
    .expect("connect returns")
    .err()
    .expect("no broker behind the listener")
    .to_string()
}

const AMQP_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

#[tokio::test(flavor = "multi_thread")]
async fn amqps_checks_the_broker_certificate_against_amqp_ca_file() {
    let dir = TempDir::new("amqps");
    let certs = Certs::generate(&dir.0);
    let (port, mut handshakes) = tls_listener(&certs, None).await;

    // The right CA: past TLS, the client speaks AMQP.
    let error = amqps_error(port, &[("ITRELAY__AMQP__CA_FILE", &certs.ca)]).await;
    let header = handshakes.recv().await.expect("a connection");
    assert_eq!(header.as_deref(), Ok(AMQP_HEADER), "client error: {error}");
    assert!(!error.contains("amqp.ca_file"), "{error}");

    // Another CA: the handshake fails, and the error names the setting.
    let error = amqps_error(port, &[("ITRELAY__AMQP__CA_FILE", &certs.other_ca)]).await;
    assert!(error.contains("`amqp.ca_file`"), "{error}");
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(handshakes.recv().await.expect("a connection").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_presents_the_client_certificate() {
    let dir = TempDir::new("amqps-client");
    let certs = Certs::generate(&dir.0);
    let (port, mut handshakes) = tls_listener(&certs, Some(&certs.ca)).await;

    let error = amqps_error(
        port,
        &[
            ("ITRELAY__AMQP__CA_FILE", &certs.ca),
            ("ITRELAY__AMQP__CLIENT_CERT_FILE", &certs.client_cert),
            ("ITRELAY__AMQP__CLIENT_KEY_FILE", &certs.client_key),
        ],
    )
    .await;
    let header = handshakes.recv().await.expect("a connection");
    assert_eq!(header.as_deref(), Ok(AMQP_HEADER), "client error: {error}");

    amqps_error(port, &[("ITRELAY__AMQP__CA_FILE", &certs.ca)]).await;
    let refused = handshakes.recv().await.expect("a connection");
    assert!(refused.is_err(), "accepted without a client certificate");
}
