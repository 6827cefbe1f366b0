//! The mapping of the reference schema (`sql/reference_schema.sql`) onto a database's real
//! tables: `[mapping.<reference table>]` in the relay's config names the real table and, per
//! reference column, the real column or an SQL expression over the row. The trigger SQL
//! (`crate::catalog::render`) and the enrichment lookups (`crate::outbox`) read through it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// Reference table → its mapping. Unmapped tables and columns keep their reference names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Mapping {
    tables: BTreeMap<String, TableMapping>,
}

/// `[mapping.<reference table>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// The real table, `schema.table` or `table` (found on the search_path).
    pub table: Option<String>,
    /// Reference column → real column or expression.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnSource>,
}

/// Where a reference column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ColumnSource {
    /// A real column of the mapped table.
    Column(String),
    /// An SQL expression over the real table's columns, named bare: `{ sql = "brand || ' ' || model" }`.
    Expression { sql: String },
}

/// A bad mapping: the config key and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} for key {key}")]
pub struct MappingError {
    pub key: String,
    pub reason: String,
}

/// The reference tables and columns itrelay reads: the only keys a mapping may name.
pub type ReferenceColumns = BTreeMap<String, BTreeSet<String>>;

impl Mapping {
    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The mapped tables, by reference name.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &TableMapping)> {
        self.tables
            .iter()
            .map(|(name, table)| (name.as_str(), table))
    }

    /// Checks every key names a reference table and column itrelay reads, and every
    /// identifier and expression is usable.
    pub fn check(&self, known: &ReferenceColumns) -> Result<(), MappingError> {
        for (reference, table) in &self.tables {
            let key = format!("mapping.{reference}");
            let Some(columns) = known.get(reference) else {
                let names: Vec<&str> = known.keys().map(String::as_str).collect();
                return Err(MappingError {
                    key,
                    reason: format!(
                        "not a reference table itrelay reads; valid: {}",
                        names.join(", ")
                    ),
                });
            };
            if let Some(real) = &table.table {
                check_table_name(real).map_err(|reason| MappingError {
                    key: format!("{key}.table"),
                    reason,
                })?;
            }
            for (column, source) in &table.columns {
                let key = format!("{key}.columns.{column}");
                if !columns.contains(column) {
                    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
                    return Err(MappingError {
                        key,
                        reason: format!(
                            "not a column of {reference} that itrelay reads; valid: {}",
                            names.join(", ")
                        ),
                    });
                }
                let checked = match source {
                    ColumnSource::Column(name) => check_identifier(name),
                    ColumnSource::Expression { sql } => check_expression(sql),
                };
                checked.map_err(|reason| MappingError { key, reason })?;
            }
        }
        Ok(())
    }

    /// The real table of `reference`, as SQL: quoted when mapped, else the bare reference
    /// name (found on the search_path).
    pub fn table_sql(&self, reference: &str) -> String {
        match self.real_table(reference) {
            Some(real) => real.split('.').map(quote).collect::<Vec<_>>().join("."),
            None => reference.to_owned(),
        }
    }

    /// The real table's schema and name as given in the mapping, if mapped.
    pub fn real_table(&self, reference: &str) -> Option<&str> {
        self.tables.get(reference)?.table.as_deref()
    }

    /// Where `column` of `reference` comes from, if mapped.
    pub fn column(&self, reference: &str, column: &str) -> Option<&ColumnSource> {
        self.tables.get(reference)?.columns.get(column)
    }

    /// `column` of `reference` as SQL over one row of the real table, columns named bare
    /// (a lookup's `SELECT ... FROM <table>`).
    pub fn column_sql(&self, reference: &str, column: &str) -> String {
        match self.column(reference, column) {
            Some(ColumnSource::Column(name)) => quote(name),
            Some(ColumnSource::Expression { sql }) => format!("({sql})"),
            None => column.to_owned(),
        }
    }

    /// `column` of `reference` read from the trigger row `row` (`NEW` or `OLD`): an
    /// expression is read from the value [`Mapping::transition_rows_sql`] computed for it.
    pub fn row_column_sql(&self, reference: &str, row: &str, column: &str) -> String {
        match self.column(reference, column) {
            Some(ColumnSource::Column(name)) => format!("{row}.{}", quote(name)),
            Some(ColumnSource::Expression { .. }) => format!("{row}.{}", computed_name(column)),
            None => format!("{row}.{column}"),
        }
    }

    /// The rows of the transition table `rows` of `reference`'s real table, as an SQL
    /// FROM item: with each expression-mapped column computed beside the real columns,
    /// where [`Mapping::row_column_sql`] reads it.
    pub fn transition_rows_sql(&self, reference: &str, rows: &str) -> String {
        let computed: String = self
            .tables
            .get(reference)
            .into_iter()
            .flat_map(|t| &t.columns)
            .filter_map(|(column, source)| match source {
                ColumnSource::Expression { sql } => {
                    Some(format!(", ({sql}) AS {}", computed_name(column)))
                }
                ColumnSource::Column(_) => None,
            })
            .collect();
        if computed.is_empty() {
            rows.to_owned()
        } else {
            format!("(SELECT *{computed} FROM {rows})")
        }
    }
}

/// The name a trigger row gives the value of expression-mapped `column`: not a plain
/// identifier, so no real column has it.
fn computed_name(column: &str) -> String {
    format!("\"mapped {column}\"")
}

/// The declared type of each column of the reference schema's tables (the text of
/// `sql/reference_schema.sql`), by (table, column).
pub fn reference_types(schema_sql: &str) -> BTreeMap<(String, String), String> {
    let mut types = BTreeMap::new();
    let mut table: Option<&str> = None;
    for line in schema_sql.lines() {
        if let Some(name) = line
            .strip_prefix("CREATE TABLE IF NOT EXISTS ")
            .and_then(|rest| rest.strip_suffix(" ("))
        {
            table = Some(name);
        } else if line.starts_with(");") {
            table = None;
        } else if let Some(table) = table {
            let line = line.trim().trim_end_matches(',');
            let Some((column, declaration)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            if column.starts_with("--") || column.chars().any(|c| c.is_ascii_uppercase()) {
                continue;
            }
            let end = [
                " PRIMARY",
                " NOT",
                " DEFAULT",
                " REFERENCES",
                " CHECK",
                " UNIQUE",
            ]
            .iter()
            .filter_map(|keyword| declaration.find(keyword))
            .min()
            .unwrap_or(declaration.len());
            types.insert(
                (table.to_owned(), column.to_owned()),
                declaration[..end].trim().to_owned(),
            );
        }
    }
    types
}

/// A double-quoted identifier.
pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// A plain identifier: letters, digits, `_` and `$`, at most 63 bytes, not starting with a digit.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if starts_well
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a plain identifier (letters, digits, _ and $, at most 63, not starting with a digit)"
        ))
    }
}

fn check_table_name(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Err(format!("{name:?} has more than schema.table"));
    }
    parts.into_iter().try_for_each(check_identifier)
}

fn check_expression(sql: &str) -> Result<(), String> {
    if sql.trim().is_empty() {
        Err("the expression is empty".to_owned())
    } else if sql.contains(';') || sql.contains("$$") || sql.contains("--") {
        Err("an expression may not contain ;, $$ or --".to_owned())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> ReferenceColumns {
        let mut known = ReferenceColumns::new();
        known.insert(
            "it_assets".into(),
            ["asset_tag", "asset_name"].map(String::from).into(),
        );
        known
    }

    fn mapping(toml: &str) -> Mapping {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn a_good_mapping_renders_quoted_names_and_expressions() {
        let m = mapping(
            r#"
            [it_assets]
            table = "inventory.hardware"
            [it_assets.columns]
            asset_tag = "Tag"
            asset_name = { sql = "brand || ' ' || model" }
            "#,
        );
        m.check(&known()).unwrap();
        assert_eq!(m.table_sql("it_assets"), r#""inventory"."hardware""#);
        assert_eq!(m.table_sql("employees"), "employees");
        assert_eq!(
            m.row_column_sql("it_assets", "NEW", "asset_tag"),
            r#"NEW."Tag""#
        );
        assert_eq!(
            m.row_column_sql("it_assets", "OLD", "asset_name"),
            r#"OLD."mapped asset_name""#
        );
        assert_eq!(
            m.transition_rows_sql("it_assets", "old_rows"),
            r#"(SELECT *, (brand || ' ' || model) AS "mapped asset_name" FROM old_rows)"#
        );
        assert_eq!(m.transition_rows_sql("it_tickets", "new_rows"), "new_rows");
        assert_eq!(
            m.column_sql("it_assets", "asset_name"),
            "(brand || ' ' || model)"
        );
        assert_eq!(m.column_sql("it_assets", "asset_id"), "asset_id");
    }

    #[test]
    fn reference_types_are_read_from_the_reference_schema() {
        let types = reference_types(crate::sql::REFERENCE_SCHEMA);
        let of = |t: &str, c: &str| types[&(t.to_owned(), c.to_owned())].as_str();
        assert_eq!(of("it_assets", "asset_id"), "uuid");
        assert_eq!(of("it_assets", "purchase_cost"), "numeric(14, 2)");
        assert_eq!(of("it_assets", "vendor_id"), "uuid");
        assert_eq!(of("employees", "email"), "text");
        // Every column itrelay reads has a reference type, to compare a mapped one with.
        let known = crate::catalog::render::reference_columns(&crate::catalog::sources().unwrap());
        for (table, columns) in known {
            for column in columns {
                assert!(
                    types.contains_key(&(table.clone(), column.clone())),
                    "{table}.{column} has no type in sql/reference_schema.sql"
                );
            }
        }
    }

    #[test]
    fn a_bad_mapping_names_the_key_and_the_reason() {
        let cases = [
            (
                "[it_things]\ntable = \"x\"",
                "mapping.it_things",
                "not a reference table",
            ),
            (
                "[it_assets]\ntable = \"a.b.c\"",
                "mapping.it_assets.table",
                "more than schema.table",
            ),
            (
                "[it_assets]\ntable = \"inv.hard ware\"",
                "mapping.it_assets.table",
                "not a plain identifier",
            ),
            (
                "[it_assets.columns]\nserial = \"s\"",
                "mapping.it_assets.columns.serial",
                "not a column of it_assets",
            ),
            (
                "[it_assets.columns]\nasset_tag = \"t;drop\"",
                "mapping.it_assets.columns.asset_tag",
                "not a plain identifier",
            ),
            (
                "[it_assets.columns]\nasset_tag = { sql = \"1; drop table x\" }",
                "mapping.it_assets.columns.asset_tag",
                "may not contain",
            ),
        ];
        for (toml, key, reason) in cases {
            let error = mapping(toml).check(&known()).unwrap_err();
            assert_eq!(error.key, key, "{toml}");
            assert!(error.reason.contains(reason), "{toml}: {}", error.reason);
        }
    }
}
