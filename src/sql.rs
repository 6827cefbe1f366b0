//! The SQL files DBAs read, embedded: `itrelay install` and `uninstall` apply exactly these.

use tokio_postgres::Client;

pub const INSTALL: &str = include_str!("../sql/install.sql");
pub const UNINSTALL: &str = include_str!("../sql/uninstall.sql");
/// The IT tables the triggers read; applied by the demo and tests, never by `install`.
pub const REFERENCE_SCHEMA: &str = include_str!("../sql/reference_schema.sql");

/// The schema version `INSTALL` creates.
pub const SCHEMA_VERSION: i32 = 1;

pub async fn install(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(INSTALL).await
}

/// Removes the installation; with `force`, even if undelivered events would be lost.
pub async fn uninstall(client: &Client, force: bool) -> Result<(), tokio_postgres::Error> {
    if force {
        client
            .batch_execute("SET itrelay.force_uninstall = on")
            .await?;
    }
    let result = client.batch_execute(UNINSTALL).await;
    if force {
        client
            .batch_execute("RESET itrelay.force_uninstall")
            .await?;
    }
    result
}

/// The installed schema version, or `None` when itrelay is not installed.
pub async fn installed_version(client: &Client) -> Result<Option<i32>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('itrelay.schema_version') IS NOT NULL",
            &[],
        )
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(None);
    }
    client
        .query_one("SELECT max(version) FROM itrelay.schema_version", &[])
        .await?
        .try_get(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_file_records_the_version_it_declares() {
        assert!(INSTALL.contains(&format!("schema version {SCHEMA_VERSION}.")));
        assert!(INSTALL.contains(&format!("VALUES ({SCHEMA_VERSION}) ON CONFLICT DO NOTHING")));
    }

    #[test]
    fn uninstall_drops_every_trigger_install_creates() {
        let created: Vec<&str> = INSTALL
            .lines()
            .filter_map(|line| line.strip_prefix("CREATE OR REPLACE TRIGGER "))
            .collect();
        assert!(!created.is_empty());
        for trigger in created {
            assert!(
                UNINSTALL.contains(&format!("DROP TRIGGER IF EXISTS {trigger} ON")),
                "uninstall.sql does not drop {trigger}"
            );
        }
    }
}
