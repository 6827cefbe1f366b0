//! The SQL generated from the catalog: the row-change triggers and the entity table of
//! `sql/install.sql`, for the reference tables or for a [`Mapping`] onto real ones.

use std::collections::BTreeSet;
use std::fmt::Write;

use anyhow::{bail, Context};

use super::source::{Catalog, Operation, TriggerFunction};
use crate::mapping::{Mapping, ReferenceColumns};

mod transition;

use transition::{rows_inserted, rows_updated, PAIRED_ROWS};

/// The markers around each generated region of `sql/install.sql`.
pub const TRIGGERS_BEGIN: &str =
    "-- ==== Row-change events: generated from catalog/ by src/catalog/render.rs, do not edit ====\n";
pub const TRIGGERS_END: &str = "-- ==== End of the row-change events ====\n";
pub const ENTITIES_BEGIN: &str = "-- generated from catalog/ (entity_key, lock_entity): begin\n";
pub const ENTITIES_END: &str = "-- generated from catalog/: end\n";
pub const SENSITIVE_BEGIN: &str = "-- generated from catalog/ (sensitive): begin\n";
pub const SENSITIVE_END: &str = "-- generated from catalog/ (sensitive): end\n";
pub const GRANTS_BEGIN: &str = "-- generated from [install] enqueue_roles: begin\n";
pub const GRANTS_END: &str = "-- generated from [install] enqueue_roles: end\n";

/// `text` with the part between `begin` and `end` (markers kept) replaced by `content`.
pub fn replace_region(text: &str, begin: &str, end: &str, content: &str) -> anyhow::Result<String> {
    let start = text
        .find(begin)
        .with_context(|| format!("no marker {begin:?}"))?
        + begin.len();
    let stop = start
        + text[start..]
            .find(end)
            .with_context(|| format!("no marker {end:?}"))?;
    Ok(format!("{}{content}{}", &text[..start], &text[stop..]))
}

/// `install` (the text of `sql/install.sql`) with its generated regions rendered from
/// `catalog` for `mapping`, granting the durable API to `enqueue_roles`.
pub fn install_sql(
    install: &str,
    catalog: &Catalog,
    mapping: &Mapping,
    enqueue_roles: &[String],
) -> anyhow::Result<String> {
    let install = replace_region(install, ENTITIES_BEGIN, ENTITIES_END, &entities(catalog))?;
    let install = replace_region(
        &install,
        SENSITIVE_BEGIN,
        SENSITIVE_END,
        &sensitive(catalog),
    )?;
    let install = replace_region(&install, GRANTS_BEGIN, GRANTS_END, &grants(enqueue_roles))?;
    replace_region(
        &install,
        TRIGGERS_BEGIN,
        TRIGGERS_END,
        &triggers(catalog, mapping)?,
    )
}

/// What `itrelay.redact` asks of the catalog's sensitive fields: a regular expression
/// matching any of their names, and the reference that replaces one of them in an object.
fn sensitive(catalog: &Catalog) -> String {
    let fields = catalog.sensitive();
    let names: Vec<&str> = fields.iter().map(|s| s.field.as_str()).collect();
    // With no sensitive field, a pattern that matches no text.
    let pattern = if names.is_empty() {
        "$^".to_owned()
    } else {
        names.join("|")
    };
    let references: String = fields
        .iter()
        .map(|s| {
            format!(
                "        WHEN '{field}' THEN '{record}/'\n            \
                 || CASE WHEN p_object->>'{id}' ~ '^[A-Za-z0-9_-]{{1,64}}$'\n                    \
                 THEN p_object->>'{id}' ELSE 'unknown' END\n            || '/{field}'\n",
                field = s.field,
                record = s.record,
                id = s.id
            )
        })
        .collect();
    format!(
        "CREATE OR REPLACE FUNCTION itrelay.sensitive_names()\n\
         RETURNS text\n\
         LANGUAGE sql\n\
         IMMUTABLE\n\
         SET search_path = pg_catalog, pg_temp\n\
         AS $$ SELECT '({pattern})' $$;\n\n\
         CREATE OR REPLACE FUNCTION itrelay.sensitive_reference(p_field text, p_object jsonb)\n\
         RETURNS text\n\
         LANGUAGE sql\n\
         IMMUTABLE\n\
         SET search_path = pg_catalog, pg_temp\n\
         AS $$\n    SELECT CASE lower(p_field)\n{references}    END\n$$;\n"
    )
}

fn grants(roles: &[String]) -> String {
    roles
        .iter()
        .map(|role| {
            let role = crate::mapping::quote(role);
            format!(
                "GRANT USAGE ON SCHEMA itrelay TO {role};\n\
                 GRANT EXECUTE ON FUNCTION itrelay.enqueue(text, jsonb) TO {role};\n"
            )
        })
        .collect()
}

fn entities(catalog: &Catalog) -> String {
    let rows: Vec<String> = catalog
        .events
        .iter()
        .map(|e| {
            format!(
                "    ('{}', '{}', {})",
                e.event_type, e.entity_key, e.lock_entity
            )
        })
        .collect();
    format!(
        "INSERT INTO itrelay.event_entities (event_type, entity_field, lock_entity) VALUES\n{}\n\
         ON CONFLICT (event_type) DO UPDATE\n\
         SET entity_field = excluded.entity_field, lock_entity = excluded.lock_entity;\n",
        rows.join(",\n")
    )
}

fn triggers(catalog: &Catalog, mapping: &Mapping) -> anyhow::Result<String> {
    let functions = catalog.trigger_functions();
    let mut tables: Vec<String> = functions
        .iter()
        .map(|f| format!("to_regclass('{}')", mapping.table_sql(f.table)))
        .collect();
    tables.sort();
    tables.dedup();
    // A table mapped elsewhere since the last install keeps no trigger of itrelay's.
    let mut sql = format!(
        "\n-- itrelay's triggers on tables that are no longer the mapped ones go (not those on\n\
         -- itrelay's own relations, such as the outbox view).\n\
         DO $$\nDECLARE\n    old record;\nBEGIN\n    FOR old IN\n        \
         SELECT t.tgname, t.tgrelid::regclass AS on_table\n        \
         FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid\n        \
         JOIN pg_class c ON c.oid = t.tgrelid\n        \
         WHERE p.pronamespace = 'itrelay'::regnamespace AND NOT t.tgisinternal\n          \
         AND c.relnamespace <> 'itrelay'::regnamespace\n          \
         AND t.tgrelid <> ALL (array_remove(ARRAY[\n              {}]::regclass[], NULL))\n    \
         LOOP\n        EXECUTE format('DROP TRIGGER %I ON %s', old.tgname, old.on_table);\n    \
         END LOOP;\nEND;\n$$;\n",
        tables.join(",\n              ")
    );
    for function in functions {
        render_function(&mut sql, &function, mapping)
            .with_context(|| format!("trigger function {}", function.name))?;
    }
    Ok(sql)
}

/// One trigger function per catalog function, called once per statement: it walks the
/// rows the statement changed (its transition tables, in the order it changed them),
/// runs the catalog's body for each row that meets its trigger's WHEN condition, and
/// records the events the bodies collected with one call of `itrelay.enqueue_events`.
fn render_function(sql: &mut String, f: &TriggerFunction, mapping: &Mapping) -> anyhow::Result<()> {
    let table = mapping.table_sql(f.table);
    writeln!(sql)?;
    for event in &f.events {
        writeln!(
            sql,
            "-- {} ({}): {}.",
            event.event_type, f.table, event.source.condition
        )?;
    }
    let body = indent(&expand(f.body, f.table, mapping, BODY_ROWS)?, "        ");
    let mut branches = Vec::new();
    for trigger in f.triggers {
        let when = match &trigger.when {
            Some(when) => Some(expand(when, f.table, mapping, PAIRED_ROWS)?),
            None => None,
        };
        let rows = match trigger.on {
            Operation::Insert => rows_inserted(mapping, f.table, when.as_deref()),
            Operation::Update => rows_updated(mapping, f.table, when.as_deref()),
        };
        branches.push(format!(
            "TG_OP = '{}' THEN\n        OPEN changed_rows FOR {rows};\n",
            trigger.on.sql()
        ));
    }
    let open = format!("    IF {}    END IF;\n", branches.join("    ELSIF "));
    write!(
        sql,
        "CREATE OR REPLACE FUNCTION itrelay.itrelay_notify_{name}()\nRETURNS trigger\nLANGUAGE plpgsql\n\
         SECURITY DEFINER\nSET search_path = pg_catalog, pg_temp\nAS $$\n\
         DECLARE\n    events itrelay.new_event[] := '{{}}';\n    changed_rows refcursor;\n    changed record;\n\
         BEGIN\n{open}    LOOP\n        FETCH changed_rows INTO changed;\n        \
         EXIT WHEN NOT FOUND;\n        NEW := changed.new;\n        OLD := changed.old;\n\
         {body}    END LOOP;\n    CLOSE changed_rows;\n    \
         PERFORM itrelay.enqueue_events('{source}', events);\n    RETURN NULL;\nEND;\n$$;\n",
        name = f.name,
        source = f.table,
    )?;
    for trigger in f.triggers {
        let name = f.trigger_name(trigger);
        let transition_tables = match trigger.on {
            Operation::Insert => "NEW TABLE AS new_rows",
            Operation::Update => "NEW TABLE AS new_rows OLD TABLE AS old_rows",
        };
        write!(
            sql,
            "\nDO $$\nBEGIN\n    IF to_regclass('{table}') IS NULL THEN\n        \
             RAISE NOTICE 'itrelay: no table {display}, so no trigger {name}';\n    ELSE\n        \
             CREATE OR REPLACE TRIGGER {name}\n            AFTER {op} ON {table}\n            \
             REFERENCING {transition_tables}\n            \
             FOR EACH STATEMENT\n            EXECUTE FUNCTION itrelay.itrelay_notify_{function}();\n    \
             END IF;\nEND;\n$$;\n",
            display = table.replace('"', ""),
            op = trigger.on.sql(),
            function = f.name,
        )?;
    }
    Ok(())
}

/// `text` with every non-empty line indented by `by`.
fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|line| {
            if line.is_empty() {
                "\n".to_owned()
            } else {
                format!("{by}{line}\n")
            }
        })
        .collect()
}

/// How the generated SQL names the trigger's new and old rows.
#[derive(Clone, Copy)]
struct Rows<'a> {
    new: &'a str,
    old: &'a str,
}

/// The rows as a body reads them: PL/pgSQL's `NEW` and `OLD`.
const BODY_ROWS: Rows<'static> = Rows {
    new: "NEW",
    old: "OLD",
};

/// Expands a trigger body or WHEN condition: `NEW.<column>` and `OLD.<column>` of the
/// trigger's `table` (read from the rows named by `rows`), `{{table:<t>}}` (a text
/// expression: the schema-qualified name of table t) and `{{literal_column:<t>.<column>}}`
/// (the column, inside a string literal).
fn expand(text: &str, table: &str, mapping: &Mapping, rows: Rows) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = next_token(rest) {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("{{") {
            let end = after.find("}}").context("unclosed {{")?;
            out.push_str(&template(&after[..end], mapping)?);
            rest = &after[end + 2..];
        } else {
            let (row, after) = rest.split_at(3);
            let row = if row == "NEW" { rows.new } else { rows.old };
            let after = &after[1..];
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let column = &after[..len];
            out.push_str(&mapping.row_column_sql(table, row, column));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the next `{{`, `NEW.<x>` or `OLD.<x>` (as a whole word) starts.
fn next_token(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find(|&i| {
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        text[i..].starts_with("{{")
            || (word_start
                && (text[i..].starts_with("NEW.") || text[i..].starts_with("OLD."))
                && text[i + 4..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
    })
}

fn template(name: &str, mapping: &Mapping) -> anyhow::Result<String> {
    if let Some(other) = name.strip_prefix("table:") {
        return Ok(match mapping.real_table(other) {
            Some(real) if real.contains('.') => format!("'{}'", mapping.table_sql(other)),
            Some(real) => format!("format('%I.%I', TG_TABLE_SCHEMA, '{real}')"),
            None => format!("format('%I.%I', TG_TABLE_SCHEMA, '{other}')"),
        });
    }
    if let Some(column) = name.strip_prefix("literal_column:") {
        let (other, column) = column
            .split_once('.')
            .context("literal_column:<table>.<column>")?;
        return Ok(mapping.column_sql(other, column).replace('\'', "''"));
    }
    bail!("unknown template {{{{{name}}}}}")
}

/// Every reference table and column the generated SQL and the enrichment lookups read:
/// the keys a mapping may name.
pub fn reference_columns(catalog: &Catalog) -> ReferenceColumns {
    let mut known = ReferenceColumns::new();
    for f in catalog.trigger_functions() {
        let mut texts = vec![f.body];
        texts.extend(f.triggers.iter().filter_map(|t| t.when.as_deref()));
        for text in texts {
            let mut rest = text;
            while let Some(at) = next_token(rest) {
                rest = &rest[at..];
                let (table, after) = match rest.strip_prefix("{{") {
                    Some(after) => {
                        let end = after.find("}}").unwrap_or(after.len());
                        let inner = &after[..end];
                        if let Some(column) = inner.strip_prefix("literal_column:") {
                            if let Some((t, c)) = column.split_once('.') {
                                known.entry(t.into()).or_default().insert(c.into());
                            }
                        } else if let Some(t) = inner.strip_prefix("table:") {
                            known.entry(t.into()).or_default();
                        }
                        rest = &after[end..];
                        continue;
                    }
                    None => (f.table, &rest[4..]),
                };
                let len = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                known
                    .entry(table.into())
                    .or_default()
                    .insert(after[..len].into());
                rest = &after[len..];
            }
        }
    }
    for reference in super::Reference::ALL {
        let columns: BTreeSet<String> = reference.columns().iter().map(|c| (*c).into()).collect();
        known
            .entry(reference.table().into())
            .or_default()
            .extend(columns);
    }
    known
}
