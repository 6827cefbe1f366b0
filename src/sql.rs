//! The SQL files DBAs read, embedded: `itrelay install` and `uninstall` apply exactly these
//! (`install` with the triggers rendered for the configured `[mapping]`).

use tokio_postgres::Client;

use crate::catalog::{self, render};
use crate::mapping::Mapping;

pub const INSTALL: &str = include_str!("../sql/install.sql");
pub const UNINSTALL: &str = include_str!("../sql/uninstall.sql");
/// The relay's least-privileged role, for psql (it takes `-v relay_role=...`).
pub const ROLE: &str = include_str!("../sql/role.sql");
/// The IT tables the triggers read; applied by the demo and tests, never by `install`.
pub const REFERENCE_SCHEMA: &str = include_str!("../sql/reference_schema.sql");

/// The schema version `INSTALL` creates.
pub const SCHEMA_VERSION: i32 = 2;

/// Each mapped table or column (and each unmapped column of a mapped table) that does not
/// exist, or whose type is not of the reference column's category (pg_type.typcategory:
/// string, numeric, date/time, ...).
pub async fn mapping_problems(client: &Client, mapping: &Mapping) -> anyhow::Result<Vec<String>> {
    let known = render::reference_columns(&catalog::sources()?);
    let types = crate::mapping::reference_types(REFERENCE_SCHEMA);
    let mut problems = Vec::new();
    for (reference, _) in mapping.tables() {
        let table = mapping.table_sql(reference);
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await?
            .get(0);
        if !exists {
            problems.push(format!("{reference}: no table {table}"));
            continue;
        }
        for column in known.get(reference).into_iter().flatten() {
            let real = match mapping.column(reference, column) {
                Some(crate::mapping::ColumnSource::Expression { .. }) => continue,
                Some(crate::mapping::ColumnSource::Column(name)) => name.as_str(),
                None => column.as_str(),
            };
            let expected = types
                .get(&(reference.to_owned(), column.clone()))
                .map_or("", String::as_str);
            let row = client
                .query_opt(
                    "SELECT format_type(a.atttypid, a.atttypmod), t.typcategory = e.typcategory
                     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                     LEFT JOIN pg_type e ON e.oid = to_regtype($3)
                     WHERE a.attrelid = to_regclass($1) AND a.attname = $2
                       AND a.attnum > 0 AND NOT a.attisdropped",
                    &[&table, &real, &expected],
                )
                .await?;
            match row {
                None => problems.push(format!("{reference}.{column}: no column {table}.{real}")),
                Some(row) if row.get::<_, Option<bool>>(1) == Some(false) => {
                    let actual: String = row.get(0);
                    problems.push(format!(
                        "{reference}.{column}: {table}.{real} is {actual}, not like {expected}"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(problems)
}

/// `ROLE` granting the enrichment lookups on the tables of `mapping`.
pub fn role_sql(mapping: &Mapping) -> anyhow::Result<String> {
    let tables: Vec<String> = catalog::Reference::ALL
        .iter()
        .map(|r| format!("'{}'", mapping.table_sql(r.table())))
        .collect();
    render::replace_region(
        ROLE,
        "-- generated from [mapping]: begin\n",
        "-- generated from [mapping]: end\n",
        &format!(
            "SELECT format('GRANT SELECT ON %s TO %I', to_regclass(name), :'relay_role')\n\
             FROM unnest(ARRAY[{}]) AS name\n\
             WHERE to_regclass(name) IS NOT NULL\n\\gexec\n",
            tables.join(", ")
        ),
    )
}

/// `[install]`: what `itrelay install` adds to the SQL it applies.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallSettings {
    /// Roles granted the durable API `itrelay.enqueue(event_type, payload)`.
    #[serde(default)]
    pub enqueue_roles: Vec<String>,
}

impl InstallSettings {
    /// Each role is a plain identifier (it is quoted in the SQL).
    pub fn check(&self) -> Result<(), crate::mapping::MappingError> {
        for role in &self.enqueue_roles {
            crate::mapping::check_identifier(role).map_err(|reason| {
                crate::mapping::MappingError {
                    key: "install.enqueue_roles".into(),
                    reason,
                }
            })?;
        }
        Ok(())
    }
}

/// The install SQL for `mapping` and `install`: `INSTALL` itself when nothing is mapped
/// and no role named.
pub fn install_sql(mapping: &Mapping, install: &InstallSettings) -> anyhow::Result<String> {
    render::install_sql(
        INSTALL,
        &catalog::sources()?,
        mapping,
        &install.enqueue_roles,
    )
}

/// Applies `INSTALL`, storing `channel` as the one the triggers notify.
pub async fn install(client: &Client, channel: &str) -> Result<(), tokio_postgres::Error> {
    apply_install(client, channel, INSTALL).await
}

/// Applies `sql` (an [`install_sql`]), storing `channel` as the one the triggers notify.
pub async fn apply_install(
    client: &Client,
    channel: &str,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT set_config('itrelay.channel', $1, false)",
            &[&channel],
        )
        .await?;
    let result = client.batch_execute(sql).await;
    if result.is_err() {
        // The file's transaction stopped at the error: end it, so the session is usable.
        client.batch_execute("ROLLBACK").await?;
    }
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

/// Which of `INSTALL`'s triggers exist in the database, and which do not.
pub async fn trigger_status(
    client: &Client,
) -> Result<(Vec<String>, Vec<String>), tokio_postgres::Error> {
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
    let names = catalog::sources()
        .map(|catalog| catalog.trigger_names())
        .unwrap_or_default();
    Ok(names.into_iter().partition(|name| present.contains(name)))
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

/// What is wrong with the installed schema version for this binary, and the command
/// that fixes it; `None` when it is [`SCHEMA_VERSION`].
pub fn version_problem(installed: Option<i32>) -> Option<String> {
    match installed {
        Some(v) if v == SCHEMA_VERSION => None,
        Some(v) if v < SCHEMA_VERSION => Some(format!(
            "schema version {v} installed, this binary needs {SCHEMA_VERSION}: run `itrelay install` \
             with this binary (it upgrades in place, keeping every pending event)"
        )),
        Some(v) => Some(format!(
            "schema version {v} installed, newer than this binary's {SCHEMA_VERSION}: run the \
             itrelay release that installed it, or a newer one"
        )),
        None => Some("not installed: run `itrelay install`".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_script_without_a_mapping_is_the_file() {
        assert_eq!(role_sql(&Mapping::default()).unwrap(), ROLE);
    }

    #[test]
    fn a_version_other_than_this_one_names_the_fix() {
        assert_eq!(version_problem(Some(SCHEMA_VERSION)), None);
        let older = version_problem(Some(SCHEMA_VERSION - 1)).unwrap();
        assert!(older.contains("run `itrelay install`"), "{older}");
        let newer = version_problem(Some(SCHEMA_VERSION + 1)).unwrap();
        assert!(newer.contains("newer than this binary"), "{newer}");
        assert!(version_problem(None)
            .unwrap()
            .contains("run `itrelay install`"));
    }

    #[test]
    fn install_file_records_the_version_it_declares() {
        assert!(INSTALL.contains(&format!("schema version {SCHEMA_VERSION}.")));
        assert!(INSTALL.contains(&format!("VALUES ({SCHEMA_VERSION}) ON CONFLICT DO NOTHING")));
        assert!(INSTALL.contains(&format!("IF installed > {SCHEMA_VERSION} THEN")));
        assert!(INSTALL.contains(&format!("this install (version {SCHEMA_VERSION})")));
    }
}
