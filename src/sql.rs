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
    if result.is_err() {
        // The file's transaction stopped at the error: end it, so the session is usable.
        client.batch_execute("ROLLBACK").await?;
    }
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
    fn every_trigger_install_creates_is_in_itrelay_s_namespace() {
        let created: Vec<&str> = trigger_names().collect();
        assert!(!created.is_empty());
        for trigger in created {
            assert!(
                trigger.starts_with("itrelay_"),
                "{trigger} could collide with a trigger of the IT module's own"
            );
        }
    }

    /// The entity rows install.sql writes into itrelay.event_entities:
    /// (event type, entity field, whether enqueue locks the entity).
    fn installed_entities() -> Vec<(String, String, bool)> {
        let start = INSTALL
            .find("INSERT INTO itrelay.event_entities")
            .expect("the entity table is filled");
        let values = &INSTALL[start..];
        let values = &values[..values.find("ON CONFLICT").expect("one statement")];
        values
            .lines()
            .filter_map(|line| line.trim().strip_prefix("('"))
            .map(|row| {
                let fields: Vec<&str> = row
                    .trim_end_matches([',', ')'])
                    .split(", ")
                    .map(|f| f.trim_matches('\''))
                    .collect();
                (
                    fields[0].to_owned(),
                    fields[1].to_owned(),
                    fields[2] == "true",
                )
            })
            .collect()
    }

    /// The table whose row each entity is.
    const ENTITY_TABLES: [(&str, &str); 12] = [
        ("asset_id", "it_assets"),
        ("ticket_id", "it_tickets"),
        ("license_id", "it_licenses"),
        ("contract_id", "it_vendor_contracts"),
        ("patch_id", "it_patches"),
        ("incident_id", "it_security_incidents"),
        ("vulnerability_id", "it_vulnerabilities"),
        ("request_id", "it_purchase_requests"),
        ("onboarding_instance_id", "it_onboarding_instances"),
        ("account_id", "it_access_accounts"),
        ("run_id", "it_report_runs"),
        ("change_id", "it_changes"),
    ];

    /// The SQL names each event's entity as the catalog does, and locks it exactly where
    /// the business write does not lock the entity's own row: time-based scans, and
    /// rows of another table than the entity's.
    #[test]
    fn entities_in_sql_match_the_catalog() {
        let installed = installed_entities();
        assert_eq!(installed.len(), crate::catalog::EVENTS.len());
        for spec in crate::catalog::EVENTS {
            let (_, field, lock) = installed
                .iter()
                .find(|(event_type, _, _)| event_type == spec.event_type)
                .unwrap_or_else(|| panic!("{} has no entity in install.sql", spec.event_type));
            assert_eq!(field, spec.entity_key, "{}", spec.event_type);
            let own_table = ENTITY_TABLES
                .iter()
                .find(|(key, _)| *key == spec.entity_key)
                .map(|(_, table)| *table);
            let own_row = own_table == Some(spec.source_table);
            let time_based = spec.condition.starts_with("time-based");
            assert_eq!(*lock, time_based || !own_row, "{}", spec.event_type);
        }
    }
}
