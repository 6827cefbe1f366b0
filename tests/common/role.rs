//! A login role of a test, dropped at the end.

use std::process::Command;

use super::PG_ADMIN_URL;

/// A login role of this test. Roles are cluster-wide: dropped at the end, after the
/// test's database (declare it before the [`TestEnv`], so it is dropped after).
pub struct TestRole(pub String);

impl TestRole {
    pub fn new() -> Self {
        Self(format!(
            "itrelay_role_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ))
    }

    /// Applies sql/role.sql for this role with psql, as the file's header says.
    pub fn apply(&self, db_url: &str) {
        let output = Command::new("psql")
            .arg(db_url)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
            .arg(format!("relay_role={}", self.0))
            .args(["-f", concat!(env!("CARGO_MANIFEST_DIR"), "/sql/role.sql")])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql -f sql/role.sql: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Creates the role as a bare login: no privilege beyond what PUBLIC has.
    pub fn create_bare(&self) {
        psql_admin(&format!("CREATE ROLE \"{}\" LOGIN", self.0));
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://{}@127.0.0.1:5432/{database}", self.0)
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([PG_ADMIN_URL, "-X", "-q", "-c"])
            .arg(format!("DROP ROLE IF EXISTS \"{}\"", self.0))
            .output();
    }
}

fn psql_admin(sql: &str) {
    let output = Command::new("psql")
        .args([PG_ADMIN_URL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
