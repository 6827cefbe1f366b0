//! A Postgres server of a test's own, for settings the shared server must keep (such as
//! `wal_level = logical`): `initdb` into a scratch directory, started on a free port with
//! trust authentication, stopped and removed on drop, also when the test fails.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::WAIT;

/// The directory of `initdb` and `postgres`: `ITRELAY_TEST_PG_BIN`, else the newest
/// /usr/lib/postgresql/<version>/bin (Debian's layout).
pub fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("ITRELAY_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (or set ITRELAY_TEST_PG_BIN)")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let version = path.file_name()?.to_str()?.parse().ok()?;
            Some((version, path.join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql")
        .1
}

/// The numeric id of `user` (or of the current user), or of its group with `-g`.
pub fn id(flag: &str, user: Option<&str>) -> u32 {
    let output = Command::new("id")
        .arg(flag)
        .args(user)
        .output()
        .expect("run id");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

/// Whether the test runs as root.
pub fn running_as_root() -> bool {
    id("-u", None) == 0
}

/// Postgres refuses to run as root: as root, the server runs as the `postgres` user.
pub fn as_postgres(command: &mut Command) -> &mut Command {
    if running_as_root() {
        command
            .uid(id("-u", Some("postgres")))
            .gid(id("-g", Some("postgres")));
    }
    command
}

/// A running server of this test; `settings` are its `-c name=value` options.
pub struct LocalPostgres {
    server: Child,
    pub port: u16,
    dir: PathBuf,
}

impl LocalPostgres {
    pub async fn start(settings: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "itrelay-pg-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        fs::create_dir_all(&dir).expect("create the server's directory");
        if running_as_root() {
            let chowned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(chowned.success(), "chown the server's directory");
        }
        let data = dir.join("data");
        let initdb = as_postgres(
            Command::new(pg_bin().join("initdb"))
                .current_dir(&dir)
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"]),
        )
        .output()
        .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = super::process::free_port();
        let log = fs::File::create(dir.join("postgres.log")).expect("log file");
        let mut command = Command::new(pg_bin().join("postgres"));
        command
            .current_dir(&dir)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
        for setting in settings {
            command.args(["-c", setting]);
        }
        let server = as_postgres(command.stdout(Stdio::null()).stderr(log))
            .spawn()
            .expect("start postgres");
        let mut instance = Self { server, port, dir };
        wait_until_ready(
            &mut instance.server,
            port,
            &instance.dir.join("postgres.log"),
        )
        .await;
        instance
    }

    /// The URL of its `postgres` database, as the superuser.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

/// Waits until the server `server` on `port` accepts connections; fails with its log
/// (`log`) if it exits or is not ready within [`WAIT`].
pub async fn wait_until_ready(server: &mut Child, port: u16, log: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = Command::new(pg_bin().join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return;
        }
        let exited = server.try_wait().expect("postgres status").is_some();
        let log = || fs::read_to_string(log).unwrap_or_default();
        assert!(!exited, "postgres exited: {}", log());
        assert!(
            tokio::time::Instant::now() < deadline,
            "postgres not ready: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown, without waiting for clients.
        let _ = Command::new("kill")
            .args(["-INT", &self.server.id().to_string()])
            .status();
        let _ = self.server.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
