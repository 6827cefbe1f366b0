//! Regenerates every file derived from the catalog and fails on any difference with what
//! is committed, after rewriting it (so `cargo test` once more passes): the Rust catalog
//! (`src/catalog/events.rs`), the generated regions of `sql/install.sql` and of
//! `config/default.toml` (`[routes]`), and `docs/catalog.md`.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::render::{self, replace_region};
use super::source::{Catalog, Operation};
use crate::mapping::Mapping;

const ROUTES_BEGIN: &str = "# generated from catalog/ (subscribers): begin\n";
const ROUTES_END: &str = "# generated from catalog/: end\n";

/// The content every generated file should have, from the catalog in `catalog_dir`, with
/// the hand-written parts taken from the files under `root`.
pub fn generate(catalog_dir: &Path, root: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let catalog = Catalog::load(catalog_dir)?;
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).with_context(|| format!("reading {path}"))
    };
    let install = render::install_sql(
        &read("sql/install.sql")?,
        &catalog,
        &Mapping::default(),
        &[],
    )?;
    let config = replace_region(
        &read("config/default.toml")?,
        ROUTES_BEGIN,
        ROUTES_END,
        &routes(&catalog),
    )?;
    Ok(vec![
        ("src/catalog/events.rs".into(), events_rs(&catalog)),
        ("sql/install.sql".into(), install),
        ("config/default.toml".into(), config),
        ("docs/catalog.md".into(), docs(&catalog)),
    ])
}

fn routes(catalog: &Catalog) -> String {
    let mut toml = String::from("[routes]\n");
    for event in &catalog.events {
        let modules: Vec<String> = event.subscribers.iter().map(|m| format!("{m:?}")).collect();
        let _ = writeln!(toml, "{} = [{}]", event.event_type, modules.join(", "));
    }
    toml
}

fn events_rs(catalog: &Catalog) -> String {
    let mut rs = String::from(
        "// Generated from catalog/ by src/catalog/regen.rs (`cargo test`): do not edit.\n\n\
         use super::{Enrichment, EventSpec, Reference, Sensitive};\n\n\
         pub static EVENTS: &[EventSpec] = &[\n",
    );
    for e in &catalog.events {
        let t = &e.event_type;
        let _ = write!(
            rs,
            "    EventSpec {{\n        event_type: {t:?},\n        name: {:?},\n        category: {:?},\n        \
             source_table: {:?},\n        condition: {:?},\n        entity_key: {:?},\n        enrichments: &[",
            e.name, e.category, e.source.table, e.source.condition, e.entity_key
        );
        for enrichment in &e.enrichments {
            let reference = match enrichment.reference.as_str() {
                "it_vendors" => "Vendor",
                "employees" => "Employee",
                _ => "Asset",
            };
            let fills: Vec<String> = enrichment
                .fills
                .iter()
                .map(|(field, column)| format!("({field:?}, {column:?})"))
                .collect();
            let _ = write!(
                rs,
                "\n            Enrichment {{\n                key: {:?},\n                reference: Reference::{reference},\n                \
                 fills: &[{}],\n            }},",
                enrichment.key,
                fills.join(", ")
            );
        }
        if !e.enrichments.is_empty() {
            rs.push_str("\n        ");
        }
        let _ = write!(
            rs,
            "],\n        schema: include_str!(\"../../catalog/{t}.v1.json\"),\n    }},\n"
        );
    }
    rs.push_str("];\n\npub static SENSITIVE: &[Sensitive] = &[\n");
    for sensitive in catalog.sensitive() {
        let _ = writeln!(
            rs,
            "    Sensitive {{ field: {:?}, record: {:?}, id: {:?} }},",
            sensitive.field, sensitive.record, sensitive.id
        );
    }
    rs.push_str(
        "];\n\n/// Each event's catalog files: (event type, toml, schema, trigger function body).\n\
         pub(super) static SOURCES: &[(&str, &str, &str, Option<&str>)] = &[\n",
    );
    for e in &catalog.events {
        let t = &e.event_type;
        let body = match e.body {
            Some(_) => format!("Some(include_str!(\"../../catalog/{t}.sql\"))"),
            None => "None".to_owned(),
        };
        let _ = write!(
            rs,
            "    (\n        {t:?},\n        include_str!(\"../../catalog/{t}.toml\"),\n        \
             include_str!(\"../../catalog/{t}.v1.json\"),\n        {body},\n    ),\n"
        );
    }
    rs.push_str("];\n");
    rs
}

fn docs(catalog: &Catalog) -> String {
    let mut md = String::from(
        "# The event catalog\n\n\
         Generated from `catalog/` (one `<event_type>.toml` per event beside its JSON Schema\n\
         `<event_type>.v1.json`, and the `<event_type>.sql` body of the trigger function it\n\
         owns) by `cargo test`; do not edit. Exchanges are those of the default\n\
         `amqp.exchange_prefix` (`it.`); status is the contract's own; entity: the payload field\n\
         events are ordered by.\n\n\
         | event_type | name | category | status | source | fires when | entity | exchanges (defaults) | the relay adds |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for e in &catalog.events {
        let exchanges: Vec<String> = e
            .subscribers
            .iter()
            .map(|m| format!("`it.{}`", m.to_lowercase()))
            .collect();
        let adds: Vec<String> = e
            .enrichments
            .iter()
            .map(|en| {
                let fields: Vec<&str> = en.fills.keys().map(String::as_str).collect();
                format!("{} ({})", fields.join(", "), en.reference)
            })
            .collect();
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | `{}` | {} | `{}` | {} | {} |",
            e.event_type,
            e.name,
            e.category,
            e.status,
            e.source.table,
            e.source.condition.replace('|', "\\|"),
            e.entity_key,
            exchanges.join(", "),
            if adds.is_empty() {
                "–".to_owned()
            } else {
                adds.join("; ")
            },
        );
    }
    md.push_str(
        "\n## Triggers\n\n\
         Created by `itrelay install` on the reference table or the table it is mapped to\n\
         (`[mapping]`); the conditions name reference columns. Each function's body (the\n\
         columns it reads, how it builds the payload) is the linked file. A trigger runs once\n\
         per statement, over the rows the statement changed (its transition tables), in the\n\
         order it changed them: for each row that meets the condition, the body appends the\n\
         row's events to `events` (`ROW(event_type, payload)::itrelay.new_event`), and\n\
         `itrelay.enqueue_events` records them all at the end of the statement.\n\n\
         | trigger | table | on | when | function (events) |\n|---|---|---|---|---|\n",
    );
    for f in catalog.trigger_functions() {
        let events: Vec<&str> = f.events.iter().map(|e| e.event_type.as_str()).collect();
        for trigger in f.triggers {
            let _ = writeln!(
                md,
                "| `{}` | `{}` | {} | {} | [`itrelay.itrelay_notify_{}`](../catalog/{}.sql) ({}) |",
                f.trigger_name(trigger),
                f.table,
                match trigger.on {
                    Operation::Insert => "insert",
                    Operation::Update => "update",
                },
                trigger
                    .when
                    .as_deref()
                    .map_or("always".to_owned(), |w| format!(
                        "`{}`",
                        w.replace('|', "\\|")
                    )),
                f.name,
                f.owner,
                events.join(", "),
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// `catalog` as the relay's own types, to render what is built from them (the
    /// AsyncAPI document); leaked, as the relay's catalog is static.
    fn leaked_specs(catalog: &Catalog) -> &'static [crate::catalog::EventSpec] {
        let leak = |text: &str| -> &'static str { Box::leak(text.to_owned().into_boxed_str()) };
        let specs: Vec<_> = catalog
            .events
            .iter()
            .map(|e| crate::catalog::EventSpec {
                event_type: leak(&e.event_type),
                name: leak(&e.name),
                category: leak(&e.category),
                source_table: leak(&e.source.table),
                condition: leak(&e.source.condition),
                entity_key: leak(&e.entity_key),
                enrichments: &[],
                schema: leak(&e.schema),
            })
            .collect();
        Box::leak(specs.into_boxed_slice())
    }

    /// The drift test: regenerates, rewrites what differs, and fails naming it.
    #[test]
    fn generated_files_match_the_catalog() {
        let mut stale = Vec::new();
        for (path, content) in generate(&root().join("catalog"), &root()).unwrap() {
            let full = root().join(&path);
            if std::fs::read_to_string(&full).ok().as_deref() != Some(content.as_str()) {
                std::fs::write(&full, content).unwrap();
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "generated from catalog/ and stale, now rewritten: {}; run `cargo test` again \
             (and commit them)",
            stale.join(", ")
        );
    }

    /// `lock_entity` is data, so the rule it follows is checked here: enqueue locks the
    /// entity exactly where the business write does not lock the entity's own row (a
    /// time-based scan, a row of another table than the entity's).
    #[test]
    fn entities_are_locked_where_the_write_does_not_lock_their_row() {
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
        for event in Catalog::load(&root().join("catalog")).unwrap().events {
            let own_table = ENTITY_TABLES
                .iter()
                .find(|(key, _)| *key == event.entity_key)
                .map(|(_, table)| *table);
            let own_row = own_table == Some(event.source.table.as_str());
            let time_based = event.source.scan.is_some();
            assert_eq!(
                event.lock_entity,
                time_based || !own_row,
                "{}",
                event.event_type
            );
        }
    }

    /// Adding an event type takes files in the catalog folder alone: a made-up one shows
    /// up in the triggers, the routes, the docs, the Rust catalog, the redaction rule and
    /// the AsyncAPI document.
    #[test]
    fn an_event_added_to_the_catalog_is_generated_everywhere() {
        let dir = std::env::temp_dir().join(format!("itrelay-catalog-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(root().join("catalog")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        std::fs::write(
            dir.join("it_asset_repainted.toml"),
            "event_type = \"it_asset_repainted\"\nname = \"IT Asset Repainted\"\n\
             category = \"IT-01 Asset Management\"\nstatus = \"planned\"\nentity_key = \"asset_id\"\n\
             lock_entity = false\nsubscribers = [\"FM\", \"PF-99\"]\n\n[source]\ntable = \"it_assets\"\n\
             condition = \"update where colour changes\"\nfunction = \"asset_repainted\"\n\n\
             [[source.triggers]]\non = \"update\"\nwhen = \"NEW.colour IS DISTINCT FROM OLD.colour\"\n\n\
             [[sensitive]]\nfield = \"paint_code\"\nrecord = \"it_paints\"\nid = \"paint_id\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("it_asset_repainted.sql"),
            "BEGIN\n    events := events || ROW('it_asset_repainted', \
             jsonb_build_object('asset_id', NEW.asset_id, 'colour', NEW.colour))::itrelay.new_event;\nEND;\n",
        )
        .unwrap();
        std::fs::write(dir.join("it_asset_repainted.v1.json"), "{}").unwrap();
        let generated = generate(&dir, &root()).unwrap();
        let catalog = Catalog::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let file = |name: &str| &generated.iter().find(|(p, _)| p.ends_with(name)).unwrap().1;
        let install = file("install.sql");
        assert!(install.contains("CREATE OR REPLACE TRIGGER itrelay_asset_repainted_trigger"));
        assert!(install.contains("WHERE (n.r).colour IS DISTINCT FROM (o.r).colour"));
        assert!(install.contains("('it_asset_repainted', 'asset_id', false)"));
        assert!(file("default.toml").contains("it_asset_repainted = [\"FM\", \"PF-99\"]"));
        assert!(file("catalog.md").contains("| `it_asset_repainted` | IT Asset Repainted |"));
        assert!(file("events.rs").contains("event_type: \"it_asset_repainted\""));
        assert!(install.contains("AS $$ SELECT '(license_key|paint_code)' $$;"));
        assert!(install.contains("WHEN 'paint_code' THEN 'it_paints/'"));
        assert!(file("events.rs").contains(
            "Sensitive { field: \"paint_code\", record: \"it_paints\", id: \"paint_id\" }"
        ));
        let mut settings =
            crate::config::Settings::load_with_env(None, Some(Default::default())).unwrap();
        settings.routes.insert(
            "it_asset_repainted".into(),
            vec!["FM".into(), "PF-99".into()],
        );
        let asyncapi = crate::cli::asyncapi::document_for(leaked_specs(&catalog), &settings);
        for operation in ["it_asset_repainted.it.fm", "it_asset_repainted.it.pf-99"] {
            assert!(asyncapi["operations"][operation].is_object(), "{operation}");
        }
        assert!(asyncapi["components"]["messages"]["it_asset_repainted"].is_object());
        assert!(asyncapi["components"]["schemas"]["payload.ItAssetRepainted.v1"].is_object());
    }
}
