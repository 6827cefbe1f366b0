use super::*;

fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load_with_env(None, Some(env))
}

fn error_of(env: &[(&str, &str)]) -> String {
    load(env)
        .expect_err("expected a configuration error")
        .to_string()
}

#[test]
fn unroutable_policies_are_per_module_and_name_known_modules() {
    let settings = load(&[("ITRELAY__DELIVERY__UNROUTABLE_BY_MODULE__PF_10", "wait")])
        .expect("a policy for PF-10");
    assert_eq!(settings.delivery.unroutable_for("PF-10"), Unroutable::Wait);
    assert_eq!(
        settings.delivery.unroutable_for("FA"),
        Unroutable::DeadLetter
    );
    let error = error_of(&[("ITRELAY__DELIVERY__UNROUTABLE_BY_MODULE__PF_11X", "wait")]);
    assert!(
        error.contains("delivery.unroutable_by_module.pf_11x")
            && error.contains("no route names this module")
            && error.contains("PF-10"),
        "{error}"
    );
    let error = error_of(&[("ITRELAY__DELIVERY__RETRY_MAX_MS", "10")]);
    assert!(error.contains("delivery.retry_max_ms"), "{error}");
}

#[test]
fn defaults_load_and_route_every_catalog_event() {
    let settings = load(&[]).unwrap();
    assert_eq!(settings.postgres.channel, "it_events");
    assert_eq!(settings.exchange_for("PF-10"), "it.pf-10");
    assert_eq!(settings.dead_letter_exchange(), "it.dead-letter");
    assert_eq!(settings.routes["it_asset_disposed"], ["FA", "GR"]);
}

#[test]
fn environment_overrides_nested_keys() {
    let settings = load(&[
        ("ITRELAY__POSTGRES__URL", "postgres://relay:pw@db:5432/it"),
        ("ITRELAY__AMQP__EXCHANGE_PREFIX", "test."),
        ("ITRELAY__RELAY__BATCH_SIZE", "50"),
    ])
    .unwrap();
    assert_eq!(
        settings.postgres.url.expose(),
        "postgres://relay:pw@db:5432/it"
    );
    assert_eq!(settings.relay.batch_size, 50);
    assert_eq!(settings.exchange_for("FA"), "test.fa");
}

#[test]
fn routes_from_the_environment_are_comma_separated() {
    let settings = load(&[
        ("ITRELAY__ROUTES__IT_ASSET_PURCHASED", "FA,GR"),
        ("ITRELAY__ROUTES__IT_ASSET_DISPOSED", "GR"),
        ("ITRELAY__AMQP__APP_ID", "1234"),
    ])
    .unwrap();
    assert_eq!(settings.routes["it_asset_purchased"], ["FA", "GR"]);
    assert_eq!(settings.routes["it_asset_disposed"], ["GR"]);
    assert_eq!(settings.amqp.app_id, "1234");
}

#[test]
fn exchange_override_per_module() {
    let settings = load(&[("ITRELAY__AMQP__EXCHANGES__FA", "finance.events")]).unwrap();
    assert_eq!(settings.exchange_for("FA"), "finance.events");
}

#[test]
fn exchange_override_for_a_hyphenated_module_from_the_environment() {
    let settings = load(&[
        ("ITRELAY__AMQP__EXCHANGES__PF_10", "projects.events"),
        ("ITRELAY__AMQP__EXCHANGES__hr_03", "people.events"),
    ])
    .unwrap();
    assert_eq!(settings.exchange_for("PF-10"), "projects.events");
    assert_eq!(settings.exchange_for("HR-03"), "people.events");
    assert_eq!(settings.exchange_for("FA-04"), "it.fa-04");
}

#[test]
fn exchange_override_for_an_unknown_module_names_the_valid_ones() {
    let message = error_of(&[("ITRELAY__AMQP__EXCHANGES__PF10", "projects.events")]);
    assert!(message.contains("`amqp.exchanges.pf10`"), "{message}");
    assert!(message.contains("valid modules: "), "{message}");
    assert!(message.contains("PF-10"), "{message}");
    let path = std::env::temp_dir().join(format!("itrelay-twice-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[amqp.exchanges]\n\"PF-10\" = \"a\"\nPF_10 = \"b\"\n",
    )
    .unwrap();
    let twice = Settings::load_with_env(Some(&path), Some(HashMap::new()))
        .expect_err("one module, two exchanges")
        .to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(twice.contains("more than one exchange"), "{twice}");
}

#[test]
fn a_bad_choice_lists_the_valid_ones() {
    let message = error_of(&[("ITRELAY__LOG__FORMAT", "yaml")]);
    assert!(
        message.contains("\"yaml\" is not a log format; valid: text, json"),
        "{message}"
    );
    assert!(message.contains("log.format"), "{message}");
    let message = error_of(&[("ITRELAY__AMQP__DEAD_LETTER_QUEUE_TYPE", "stream")]);
    assert!(message.contains("valid: classic, quorum"), "{message}");
    assert!(message.contains("dead_letter_queue_type"), "{message}");
    let settings = load(&[("ITRELAY__LOG__FORMAT", "JSON")]).unwrap();
    assert_eq!(settings.log.format, LogFormat::Json);
}

#[test]
fn dead_letter_queue_defaults_to_quorum_under_the_exchange_name() {
    let settings = load(&[]).unwrap();
    assert_eq!(settings.amqp.dead_letter_queue(), "it.dead-letter");
    assert_eq!(settings.amqp.dead_letter_queue_type, QueueType::Quorum);
    assert_eq!(settings.amqp.dead_letter_max_length, 0);
    let settings = load(&[
        ("ITRELAY__AMQP__DEAD_LETTER_QUEUE", "rejected"),
        ("ITRELAY__AMQP__DEAD_LETTER_QUEUE_TYPE", "classic"),
        ("ITRELAY__AMQP__DEAD_LETTER_MAX_LENGTH", "1000"),
    ])
    .unwrap();
    assert_eq!(settings.amqp.dead_letter_queue(), "it.rejected");
    assert_eq!(settings.amqp.dead_letter_queue_type, QueueType::Classic);
    assert_eq!(settings.amqp.dead_letter_max_length, 1000);
    let bad = error_of(&[("ITRELAY__AMQP__DEAD_LETTER_QUEUE", "dead letters")]);
    assert!(bad.contains("amqp.dead_letter_queue"), "{bad}");
}

#[test]
fn bad_values_name_their_key_and_reason() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("ITRELAY__POSTGRES__CHANNEL", "it_events; DROP TABLE x")],
            "postgres.channel",
        ),
        (
            &[("ITRELAY__POSTGRES__CHANNEL", "\"quoted\"")],
            "postgres.channel",
        ),
        (
            &[("ITRELAY__POSTGRES__URL", "postgres://u:pw@host:notaport/db")],
            "postgres.url",
        ),
        (&[("ITRELAY__AMQP__URL", "http://broker")], "amqp.url"),
        (
            &[("ITRELAY__AMQP__EXCHANGE_PREFIX", "it events")],
            "amqp.exchange_prefix",
        ),
        (
            &[("ITRELAY__AMQP__EXCHANGE_PREFIX", "")],
            "amqp.exchange_prefix",
        ),
        (
            &[("ITRELAY__AMQP__DEAD_LETTER", "dead;letter")],
            "amqp.dead_letter",
        ),
        (&[("ITRELAY__RELAY__BATCH_SIZE", "0")], "relay.batch_size"),
        (
            &[("ITRELAY__SCAN__INTERVAL_SECS", "0")],
            "scan.interval_secs",
        ),
        (&[("ITRELAY__HTTP__LISTEN", "localhost")], "http.listen"),
        (
            &[("ITRELAY__RELAY__RECONNECT_MAX_MS", "1")],
            "relay.reconnect_max_ms",
        ),
        (&[("ITRELAY__RELAY__LEASE_SECS", "14")], "relay.lease_secs"),
    ];
    for (env, key) in cases {
        let message = error_of(env);
        assert!(message.contains(key), "{message} should name {key}");
    }
}

#[test]
fn errors_never_show_the_password() {
    let message = error_of(&[("ITRELAY__POSTGRES__URL", "postgres://u:hunter2@host:x/db")]);
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn passwords_from_the_environment_are_taken_as_given() {
    let settings = load(&[
        ("ITRELAY__POSTGRES__PASSWORD", "007"),
        ("itrelay__amqp__password", "1e5"),
    ])
    .unwrap();
    assert_eq!(settings.postgres.password.unwrap().expose(), "007");
    assert_eq!(settings.amqp.password.unwrap().expose(), "1e5");
}

#[test]
fn password_files_are_read_at_start() {
    let path = std::env::temp_dir().join(format!("itrelay-pw-{}", std::process::id()));
    std::fs::write(&path, "s3cret\n").unwrap();
    let file = path.display().to_string();
    let settings = load(&[("ITRELAY__AMQP__PASSWORD_FILE", &file)]).unwrap();
    assert_eq!(settings.amqp.password.unwrap().expose(), "s3cret");
    let both = error_of(&[
        ("ITRELAY__POSTGRES__PASSWORD_FILE", &file),
        ("ITRELAY__POSTGRES__PASSWORD", "other"),
    ]);
    assert!(both.contains("postgres.password_file"), "{both}");
    std::fs::remove_file(&path).unwrap();
    let missing = error_of(&[("ITRELAY__POSTGRES__PASSWORD_FILE", &file)]);
    assert!(missing.contains("`postgres.password_file`"), "{missing}");
}

#[test]
fn unknown_keys_are_rejected() {
    let message = error_of(&[("ITRELAY__POSTGRES__HOSTNAME", "db")]);
    assert!(message.contains("hostname"), "{message}");
}

#[test]
fn cloudevents_settings_load_and_are_checked() {
    let settings = load(&[
        ("ITRELAY__CLOUDEVENTS__HEADER_PREFIX", "cloudEvents:"),
        ("ITRELAY__CLOUDEVENTS__TYPE_PREFIX", "com.example.it"),
    ])
    .unwrap();
    assert_eq!(settings.cloudevents.header("id"), "cloudEvents:id");
    let message = error_of(&[("ITRELAY__CLOUDEVENTS__TYPE_PREFIX", "Example")]);
    assert!(message.contains("cloudevents.type_prefix"), "{message}");
    let message = error_of(&[("ITRELAY__CLOUDEVENTS__HEADER_PREFIX", "ce_")]);
    assert!(message.contains("header_prefix"), "{message}");
}

#[test]
fn unparsable_number_names_the_key() {
    let message = error_of(&[("ITRELAY__RELAY__BATCH_SIZE", "many")]);
    assert!(message.contains("batch_size"), "{message}");
}

#[test]
fn channel_names() {
    assert!(check_channel("it_events").is_ok());
    assert!(check_channel("_x1").is_ok());
    for bad in [
        "",
        "1abc",
        "It_Events",
        "a-b",
        "a\"b",
        "a;b",
        &"x".repeat(64),
    ] {
        assert!(check_channel(bad).is_err(), "{bad:?} accepted");
    }
}
