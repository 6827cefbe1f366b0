//! The reference schema mapped onto real tables whose names and columns all differ: the
//! install's triggers and the relay's enrichment lookups read the real ones, and the
//! published events are those of the reference schema.

mod common;

use common::*;
use serde_json::json;

const ORG: &str = "0a000000-0000-4000-8000-000000000001";
const VENDOR: &str = "0b000000-0000-4000-8000-000000000001";
const STAFF: &str = "0c000000-0000-4000-8000-000000000001";
const ACTOR: &str = "0c000000-0000-4000-8000-000000000002";
const HARDWARE: &str = "0d000000-0000-4000-8000-000000000001";
const SITE: &str = "0e000000-0000-4000-8000-000000000001";
const TICKET: &str = "0f000000-0000-4000-8000-000000000001";
const LICENSE: &str = "01000000-0000-4000-8000-000000000001";

/// The IT module's tables as a DBA might really have them.
const REAL_SCHEMA: &str = "
CREATE SCHEMA inv;
CREATE TABLE inv.suppliers (sup_uuid uuid PRIMARY KEY, tenant uuid NOT NULL, sup_label text NOT NULL);
CREATE TABLE inv.staff (person uuid PRIMARY KEY, tenant uuid NOT NULL, full_name text NOT NULL,
                        mail text);
CREATE TABLE inv.hardware (hw uuid PRIMARY KEY, tenant uuid NOT NULL, tag text NOT NULL,
    brand text NOT NULL, model text NOT NULL, kind text NOT NULL, lifecycle text NOT NULL DEFAULT 'new',
    cost_amount numeric(14, 2), bought_on date, supplier uuid, po text, serial text,
    warranty integer, site uuid, bldg text, rm text, disp_method text, disp_on date,
    disp_value numeric(14, 2), wipe text, destroyed boolean, changed_by uuid,
    -- Columns named as the trigger queries' aliases: the triggers must not read them.
    n text, o text, r text, i integer, one text);
CREATE TABLE inv.handovers (handover uuid PRIMARY KEY DEFAULT gen_random_uuid(), tenant uuid NOT NULL,
    hw uuid NOT NULL, person uuid NOT NULL, handed_on date NOT NULL DEFAULT current_date,
    prev_person uuid, site uuid, bldg text, rm text, handed_by uuid NOT NULL);
CREATE TABLE inv.helpdesk (case_id uuid PRIMARY KEY, tenant uuid NOT NULL, case_no text NOT NULL,
    cat text NOT NULL, subcat text, prio text NOT NULL, title text NOT NULL, body text NOT NULL,
    reporter uuid NOT NULL, hw uuid, site uuid, state text NOT NULL DEFAULT 'open', agent uuid,
    notes text, changed_by uuid, n text, o text, r text, i integer, one text);
CREATE TABLE inv.software (sw uuid PRIMARY KEY, tenant uuid NOT NULL, product text NOT NULL,
    publisher text NOT NULL, kind text NOT NULL, secret text, seats integer NOT NULL,
    seat_price numeric(14, 2) NOT NULL, bought_on date NOT NULL, expires_on date,
    renewal numeric(14, 2), supplier uuid, changed_by uuid);
";

const MAPPING: &str = r#"
[mapping.it_vendors]
table = "inv.suppliers"
columns = { vendor_id = "sup_uuid", organization_id = "tenant", vendor_name = "sup_label" }

[mapping.employees]
table = "inv.staff"
columns = { employee_id = "person", organization_id = "tenant", employee_name = "full_name", email = "mail" }

[mapping.it_assets]
table = "inv.hardware"
[mapping.it_assets.columns]
asset_id = "hw"
organization_id = "tenant"
asset_tag = "tag"
asset_name = { sql = "brand || ' ' || model" }
asset_type = "kind"
status = "lifecycle"
purchase_cost = "cost_amount"
purchase_date = "bought_on"
vendor_id = "supplier"
po_number = "po"
serial_number = "serial"
warranty_months = "warranty"
site_id = "site"
building = "bldg"
room = "rm"
disposal_method = "disp_method"
disposal_date = "disp_on"
disposal_value = "disp_value"
data_sanitization_method = "wipe"
certificate_of_destruction = "destroyed"
updated_by = "changed_by"

[mapping.it_asset_assignments]
table = "inv.handovers"
[mapping.it_asset_assignments.columns]
organization_id = "tenant"
asset_id = "hw"
employee_id = "person"
assignment_date = "handed_on"
previous_assignee_id = "prev_person"
site_id = "site"
building = "bldg"
room = "rm"
assigned_by = "handed_by"

[mapping.it_tickets]
table = "inv.helpdesk"
[mapping.it_tickets.columns]
ticket_id = "case_id"
organization_id = "tenant"
ticket_number = "case_no"
category = "cat"
subcategory = "subcat"
priority = "prio"
subject = "title"
description = "body"
requester_id = "reporter"
affected_asset_id = "hw"
site_id = "site"
status = "state"
assigned_to_id = "agent"
resolution_notes = "notes"
updated_by = "changed_by"

[mapping.it_licenses]
table = "inv.software"
[mapping.it_licenses.columns]
license_id = "sw"
organization_id = "tenant"
software_name = "product"
software_vendor = "publisher"
license_type = "kind"
license_key = "secret"
license_count = "seats"
cost_per_license = "seat_price"
purchase_date = "bought_on"
expiration_date = "expires_on"
renewal_cost = "renewal"
vendor_id = "supplier"
updated_by = "changed_by"
"#;

#[tokio::test]
async fn events_come_from_mapped_tables_enriched_from_mapped_tables() {
    let mut env = TestEnv::new().await;
    env.execute(REAL_SCHEMA).await;
    let file = std::env::temp_dir().join(format!("itrelay-mapping-{}.toml", env.id));
    std::fs::write(&file, MAPPING).unwrap();
    let vars = env.env_vars().into_iter().collect();
    let settings = itrelay::config::Settings::load_with_env(Some(&file), Some(vars));
    std::fs::remove_file(&file).unwrap();
    let settings = settings.expect("the mapping is valid");
    let install = itrelay::sql::install_sql(&settings.mapping, &settings.install).unwrap();
    assert!(install.contains("AFTER INSERT ON \"inv\".\"hardware\""));
    assert!(install.contains("(brand || ' ' || model) AS \"mapped asset_name\""));
    itrelay::sql::apply_install(&env.client, "it_events", &install)
        .await
        .expect("install with the mapping");
    env.start_relay_with(settings);

    env.execute(&format!(
        "INSERT INTO inv.suppliers VALUES ('{VENDOR}', '{ORG}', 'Lenovo Partner');
         INSERT INTO inv.staff VALUES ('{STAFF}', '{ORG}', 'Ada Lovelace', 'ada@example.com'),
                                     ('{ACTOR}', '{ORG}', 'Grace Hopper', NULL);
         INSERT INTO inv.hardware (hw, tenant, tag, brand, model, kind, cost_amount, bought_on, supplier,
                                   site, bldg, rm)
             VALUES ('{HARDWARE}', '{ORG}', 'LT-7', 'ThinkPad', 'X1', 'laptop', 1499.00, '2026-03-01',
                     '{VENDOR}', '{SITE}', 'HQ', '4.12');
         INSERT INTO inv.handovers (tenant, hw, person, handed_on, handed_by)
             VALUES ('{ORG}', '{HARDWARE}', '{STAFF}', '2026-03-02', '{ACTOR}');
         INSERT INTO inv.helpdesk (case_id, tenant, case_no, cat, prio, title, body, reporter, hw)
             VALUES ('{TICKET}', '{ORG}', 'T-1', 'hardware', 'high', 'Hinge', 'Cracked hinge', '{STAFF}',
                     '{HARDWARE}');
         UPDATE inv.helpdesk SET state = 'in_progress', agent = '{ACTOR}', changed_by = '{ACTOR}'
             WHERE case_id = '{TICKET}';
         INSERT INTO inv.software (sw, tenant, product, publisher, kind, secret, seats, seat_price,
                                   bought_on, expires_on, supplier)
             VALUES ('{LICENSE}', '{ORG}', 'CAD Pro', 'Autodraw', 'subscription', 'KEY-SECRET-1', 10, 99.5,
                     '2026-01-01', '2027-01-01', '{VENDOR}');
         UPDATE inv.software SET expires_on = '2028-01-01', renewal = 900, changed_by = '{ACTOR}'
             WHERE sw = '{LICENSE}';"
    ))
    .await;
    env.wait_until_settled(6).await;
    let mut bodies: Vec<serde_json::Value> = env
        .drain_all()
        .await
        .into_values()
        .flatten()
        .map(|m| without_timestamp(&m.body))
        .collect();
    bodies.sort_by_key(|b| b["event_type"].to_string());
    bodies.dedup();
    let location = json!({"site_id": SITE, "building": "HQ", "room": "4.12"});
    assert_eq!(
        bodies,
        vec![
            json!({"event_type": "it_asset_assigned", "asset_id": HARDWARE, "employee_id": STAFF,
                   "assignment_date": "2026-03-02", "organization_id": ORG, "assigned_by": ACTOR,
                   "asset_tag": "LT-7", "asset_name": "ThinkPad X1", "asset_type": "laptop",
                   "location": location, "employee_name": "Ada Lovelace"}),
            json!({"event_type": "it_asset_purchased", "asset_id": HARDWARE, "asset_tag": "LT-7",
                   "asset_type": "laptop", "asset_name": "ThinkPad X1", "purchase_cost": 1499.00,
                   "purchase_date": "2026-03-01", "vendor_id": VENDOR, "organization_id": ORG,
                   "site_id": SITE, "vendor_name": "Lenovo Partner"}),
            json!({"event_type": "it_license_created", "license_id": LICENSE, "software_name": "CAD Pro",
                   "software_vendor": "Autodraw", "license_type": "subscription",
                   "license_key_ref": format!("it_licenses/{LICENSE}/license_key"),
                   "license_count": 10, "cost_per_license": 99.5, "total_cost": 995.0,
                   "purchase_date": "2026-01-01", "expiration_date": "2027-01-01",
                   "vendor_id": VENDOR, "organization_id": ORG}),
            json!({"event_type": "it_license_renewed", "license_id": LICENSE, "software_name": "CAD Pro",
                   "software_vendor": "Autodraw", "old_expiration_date": "2027-01-01",
                   "new_expiration_date": "2028-01-01", "renewal_cost": 900.0,
                   "renewed_by": ACTOR, "organization_id": ORG,
                   "renewal_date": bodies[3]["renewal_date"]}),
            json!({"event_type": "it_ticket_created", "ticket_id": TICKET, "ticket_number": "T-1",
                   "category": "hardware", "priority": "high", "subject": "Hinge",
                   "description": "Cracked hinge", "requester_id": STAFF, "affected_asset_id": HARDWARE,
                   "organization_id": ORG, "requester_name": "Ada Lovelace",
                   "requester_email": "ada@example.com"}),
            json!({"event_type": "it_ticket_status_changed", "ticket_id": TICKET, "ticket_number": "T-1",
                   "old_status": "open", "new_status": "in_progress", "requester_id": STAFF,
                   "assigned_to_id": ACTOR, "changed_by": ACTOR, "organization_id": ORG}),
        ]
    );
    let sources: Vec<String> = env
        .client
        .query(
            "SELECT DISTINCT source_table FROM itrelay.outbox ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        sources,
        [
            "it_asset_assignments",
            "it_assets",
            "it_licenses",
            "it_tickets"
        ]
    );
}

#[test]
fn a_bad_mapping_stops_the_start_naming_the_key() {
    let cases = [
        ("[mapping.it_gadgets]\ntable = \"x\"", "mapping.it_gadgets"),
        (
            "[mapping.it_assets.columns]\ncolour = \"c\"",
            "mapping.it_assets.columns.colour",
        ),
        (
            "[mapping.it_assets]\ntable = \"inv.hard-ware\"",
            "mapping.it_assets.table",
        ),
    ];
    for (toml, key) in cases {
        let file =
            std::env::temp_dir().join(format!("itrelay-bad-mapping-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&file, toml).unwrap();
        let error = itrelay::config::Settings::load_with_env(Some(&file), Some(Default::default()))
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&file).unwrap();
        assert!(error.contains(key), "{toml}: {error}");
    }
}

#[tokio::test]
async fn check_names_each_mapped_column_missing_or_of_another_type() {
    let env = TestEnv::new().await;
    env.execute(REAL_SCHEMA).await;
    let file = std::env::temp_dir().join(format!("itrelay-check-mapping-{}.toml", env.id));
    let mapping = MAPPING
        .replace("asset_tag = \"tag\"", "asset_tag = \"label\"")
        .replace("purchase_cost = \"cost_amount\"", "purchase_cost = \"tag\"")
        .replace("table = \"inv.staff\"", "table = \"inv.people\"");
    std::fs::write(&file, mapping).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("--config")
        .arg(&file)
        .arg("check")
        .envs(env.env_vars())
        .output()
        .await
        .expect("run itrelay check");
    std::fs::remove_file(&file).unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{report}");
    for problem in [
        "employees: no table \"inv\".\"people\"",
        "it_assets.asset_tag: no column \"inv\".\"hardware\".label",
        "it_assets.purchase_cost: \"inv\".\"hardware\".tag is text, not like numeric(14, 2)",
    ] {
        assert!(report.contains(problem), "{problem} not in: {report}");
    }
    assert!(!report.contains("it_tickets"), "{report}");
}

#[tokio::test]
async fn the_role_script_grants_the_lookups_on_the_mapped_tables_that_exist() {
    let role = common::role::TestRole::new();
    let env = TestEnv::new().await;
    env.execute(REAL_SCHEMA).await;
    let file = std::env::temp_dir().join(format!("itrelay-role-mapping-{}.toml", env.id));
    // employees mapped to a table this database lacks: skipped, as install skips it.
    let mapping = MAPPING.replace("table = \"inv.staff\"", "table = \"inv.people\"");
    std::fs::write(&file, mapping).unwrap();
    let printed = tokio::process::Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("--config")
        .arg(&file)
        .args(["sql", "role"])
        .envs(env.env_vars())
        .output()
        .await
        .expect("run itrelay sql role");
    std::fs::remove_file(&file).unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let script = std::env::temp_dir().join(format!("itrelay-role-{}.sql", env.id));
    std::fs::write(&script, &printed.stdout).unwrap();
    let applied = std::process::Command::new("psql")
        .arg(&env.db_url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("relay_role={}", role.0))
        .arg("-f")
        .arg(&script)
        .output()
        .expect("run psql");
    std::fs::remove_file(&script).unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    for (table, granted) in [
        ("inv.suppliers", true),
        ("inv.hardware", true),
        ("inv.staff", false),
    ] {
        let has: bool = env
            .client
            .query_one(
                "SELECT has_table_privilege($1, $2, 'SELECT')",
                &[&role.0, &table],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(has, granted, "{table}");
    }
}
