//! The SQL files DBAs read, embedded: `itrelay install` and `uninstall` apply exactly these.

use tokio_postgres::Client;

pub const INSTALL: &str = include_str!("../sql/install.sql");
pub const UNINSTALL: &str = include_str!("../sql/uninstall.sql");
/// The IT tables the triggers read; applied by the demo and tests, never by `install`.
pub const REFERENCE_SCHEMA: &str = include_str!("../sql/reference_schema.sql");

/// The schema version `INSTALL` creates.
pub const SCHEMA_VERSION: i32 = 1;

/// Applies `INSTALL`, storing `channel` as the one the triggers notify.
pub async fn install(client: &Client, channel: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT set_config('itrelay.channel', $1, false)",
            &[&channel],
        )
        .await?;
    let result = client.batch_execute(INSTALL).await;
    client.batch_execute("RESET itrelay.channel").await?;
    result
}

/// The NOTIFY channel `install` stored, which the triggers notify.
pub async fn installed_channel(client: &Client) -> Result<String, tokio_postgres::Error> {
    client
        .query_one("SELECT channel FROM itrelay.settings", &[])
        .await?
        .try_get(0)
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

/// The names of the triggers `INSTALL` creates (where their tables exist).
pub fn trigger_names() -> impl Iterator<Item = &'static str> {
    INSTALL.lines().filter_map(|line| {
        line.trim_start()
            .strip_prefix("CREATE OR REPLACE TRIGGER ")
            .map(str::trim)
    })
}

/// Which of `INSTALL`'s triggers exist in the database, and which do not.
pub async fn trigger_status(
    client: &Client,
) -> Result<(Vec<&'static str>, Vec<&'static str>), tokio_postgres::Error> {
    let present: Vec<String> = client
        .query(
            "SELECT tgname::text FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
             WHERE p.pronamespace = 'itrelay'::regnamespace AND NOT t.tgisinternal",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(trigger_names().partition(|name| present.iter().any(|p| p == name)))
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
        let created: Vec<&str> = trigger_names().collect();
        assert!(!created.is_empty());
        for trigger in created {
            assert!(
                UNINSTALL.contains(&format!("DROP TRIGGER IF EXISTS {trigger} ON")),
                "uninstall.sql does not drop {trigger}"
            );
        }
    }
}
