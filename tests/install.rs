//! The SQL a DBA applies: installing twice changes nothing, uninstalling removes exactly
//! what was installed (and refuses to drop undelivered events), and the CLI applies the
//! very same files.

mod common;

use std::process::Output;

use common::*;
use tokio::process::Command;

/// Every schema, relation, function and trigger definition in the database, as text.
async fn catalog_snapshot(env: &TestEnv) -> String {
    env.client
        .query_one(
            "SELECT string_agg(item, E'\\n' ORDER BY item) FROM (
                 SELECT 'schema ' || nspname FROM pg_namespace
                 UNION ALL
                 SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' ' || c.oid
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                 UNION ALL
                 SELECT 'function ' || n.nspname || '.' || p.proname || ' ' || p.oid || ' ' || md5(pg_get_functiondef(p.oid))
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                 UNION ALL
                 SELECT 'trigger ' || tgname || ' ' || oid || ' ' || md5(pg_get_triggerdef(oid))
                 FROM pg_trigger WHERE NOT tgisinternal
             ) AS objects(item)",
            &[],
        )
        .await
        .expect("catalog snapshot")
        .get(0)
}

async fn itrelay(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .args(args)
        .envs(env.env_vars())
        .output()
        .await
        .expect("run itrelay")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn install_twice_changes_nothing_and_uninstall_removes_exactly_it() {
    let env = TestEnv::new().await;
    let installed = catalog_snapshot(&env).await;
    assert!(installed.contains("trigger itrelay_asset_purchased_trigger"));

    let again = itrelay(&env, &["install"]).await;
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        catalog_snapshot(&env).await,
        installed,
        "second install changed the catalog"
    );

    let removed = itrelay(&env, &["uninstall"]).await;
    assert!(removed.status.success(), "{removed:?}");
    let after_uninstall = catalog_snapshot(&env).await;
    assert!(!after_uninstall.contains("itrelay"), "{after_uninstall}");
    assert!(!after_uninstall.contains("trigger "), "{after_uninstall}");

    // Installing again restores the same definitions (new oids aside).
    let reinstalled = itrelay(&env, &["install"]).await;
    assert!(reinstalled.status.success(), "{reinstalled:?}");
    let strip_oids = |snapshot: &str| -> Vec<String> {
        snapshot
            .lines()
            .map(|line| {
                line.split(' ')
                    .filter(|word| word.parse::<u32>().is_err())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    assert_eq!(
        strip_oids(&catalog_snapshot(&env).await),
        strip_oids(&installed)
    );
}

#[tokio::test]
async fn uninstall_refuses_to_drop_undelivered_events_unless_forced() {
    let env = TestEnv::new().await;
    env.seed().await;
    env.execute(&format!(
        "UPDATE it_assets SET status = 'disposed', disposal_method = 'recycled', disposal_date = '2026-03-02',
             updated_by = '{ACTOR}' WHERE asset_id = '{ASSET}'"
    ))
    .await;
    let refused = itrelay(&env, &["uninstall"]).await;
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("still holds undelivered events"), "{error}");
    assert_eq!(env.count("SELECT count(*) FROM itrelay.outbox").await, 1);

    let forced = itrelay(&env, &["uninstall", "--force"]).await;
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(
        env.count("SELECT count(*) FROM pg_namespace WHERE nspname = 'itrelay'")
            .await,
        0
    );
}

#[tokio::test]
async fn sql_command_prints_the_files_dbas_apply() {
    let env = TestEnv::new().await;
    for (args, file) in [
        (&["sql"][..], "sql/install.sql"),
        (&["sql", "uninstall"][..], "sql/uninstall.sql"),
        (&["sql", "reference-schema"][..], "sql/reference_schema.sql"),
    ] {
        let output = itrelay(&env, args).await;
        assert!(output.status.success());
        let on_disk = std::fs::read_to_string(file).unwrap();
        assert_eq!(stdout(&output), on_disk, "{file}");
    }
}

#[tokio::test]
async fn check_reports_each_part() {
    let env = TestEnv::new().await;
    let healthy = itrelay(&env, &["check"]).await;
    assert!(healthy.status.success(), "{healthy:?}");
    let report = stdout(&healthy);
    for line in [
        "ok    config",
        "ok    postgres",
        "ok    sql       schema version 2",
        "ok    rabbitmq",
    ] {
        assert!(report.contains(line), "{report}");
    }
    assert!(
        !report.contains("guest:guest"),
        "password printed: {report}"
    );

    let removed = itrelay(&env, &["uninstall"]).await;
    assert!(removed.status.success());
    let missing = itrelay(&env, &["check"]).await;
    assert!(!missing.status.success());
    assert!(stdout(&missing).contains("FAIL  sql       not installed: run `itrelay install`"));

    let unreachable = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .arg("check")
        .envs(env.env_vars())
        .env("ITRELAY__AMQP__URL", "amqp://guest:s3cret@127.0.0.1:1/%2f")
        .output()
        .await
        .unwrap();
    assert!(!unreachable.status.success());
    let report = stdout(&unreachable);
    assert!(report.contains("FAIL  rabbitmq"), "{report}");
    assert!(!report.contains("s3cret"), "password printed: {report}");
}

#[tokio::test]
async fn bad_configuration_fails_at_start_naming_the_key() {
    let env = TestEnv::new().await;
    for (key, value, named) in [
        (
            "ITRELAY__POSTGRES__CHANNEL",
            "it_events\"; NOTIFY x; --",
            "postgres.channel",
        ),
        (
            "ITRELAY__AMQP__EXCHANGE_PREFIX",
            "it;",
            "amqp.exchange_prefix",
        ),
        ("ITRELAY__RELAY__BATCH_SIZE", "lots", "batch_size"),
        (
            "ITRELAY__POSTGRES__URL",
            "postgres://u:s3cret@db:port/x",
            "postgres.url",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_itrelay"))
            .arg("run")
            .envs(env.env_vars())
            .env(key, value)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{key}");
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(error.contains(named), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
}

#[tokio::test]
async fn every_command_has_help() {
    let env = TestEnv::new().await;
    for command in ["run", "install", "uninstall", "sql", "check", "demo"] {
        let output = itrelay(&env, &[command, "--help"]).await;
        assert!(output.status.success(), "{command} --help");
        assert!(stdout(&output).contains("Usage: itrelay"), "{command}");
    }
}

#[tokio::test]
async fn install_skips_triggers_of_missing_tables_and_check_names_them() {
    let env = TestEnv::new().await;
    env.execute("DROP TABLE it_changes CASCADE").await;
    let reinstalled = itrelay(&env, &["install"]).await;
    assert!(reinstalled.status.success(), "{reinstalled:?}");
    let check = itrelay(&env, &["check"]).await;
    assert!(check.status.success(), "{check:?}");
    let report = stdout(&check);
    let line = report
        .lines()
        .find(|line| line.contains("triggers"))
        .unwrap_or_else(|| panic!("no triggers line in {report}"));
    assert!(line.contains("not installed"), "{line}");
    assert!(line.contains("itrelay_change"), "{line}");
    assert!(!line.contains("itrelay_asset_disposed_trigger"), "{line}");
}
