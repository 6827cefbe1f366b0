//! Secrets never leave the database: a marker planted under a sensitive key (any case),
//! at random depths and in random shapes (nested objects, array items, JSON inside a
//! string field, a whole payload sent as JSON text with an escaped key, unparsable
//! notification text) appears in no output: published bodies and headers, dead letters,
//! outbox rows, the log at trace level, /metrics, and `itrelay dead-letters` / `status`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use tokio::process::Command;

/// What every planted secret contains; no output may.
const MARK: &str = "ZQXMARK";

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn base(n: u64) -> Value {
    json!({
        "event_type": "it_ticket_status_changed",
        "ticket_id": format!("e0000000-0000-4000-8000-{n:012}"),
        "ticket_number": format!("EXT-{n}"),
        "old_status": "open",
        "new_status": "pending",
        "requester_id": EMPLOYEE,
        "changed_by": ACTOR,
        "organization_id": ORG,
    })
}

/// The planted secret: under a sensitive key in some case, the value in some shape.
fn secret(rng: &mut Rng, n: u64) -> (String, Value) {
    let key = ["license_key", "License_Key", "LICENSE_KEY", "license_KEY"][rng.below(4) as usize];
    let text = format!("{MARK}-{n}, still secret}} \"after\"");
    let value = match rng.below(4) {
        0 => json!(text),
        1 => json!([text]),
        2 => json!({"inner": text}),
        _ => json!({"license_key": text, "x": [text]}),
    };
    (key.to_owned(), value)
}

/// Wraps `inner` in `depth` levels of objects and arrays.
fn bury(rng: &mut Rng, inner: Value, depth: u64) -> Value {
    (0..depth).fold(inner, |value, _| match rng.below(2) {
        0 => json!({"level": value}),
        _ => json!([1, value]),
    })
}

/// An event carrying a secret, as the SQL that enqueues it (`None`) or the text of a
/// notification (`Some`).
enum Planted {
    Enqueued(Value),
    Notified(String),
}

fn plant(rng: &mut Rng, n: u64) -> Planted {
    let mut body = base(n);
    let (key, value) = secret(rng, n);
    let depth = rng.below(4);
    let holder = bury(rng, json!({ key.clone(): value.clone() }), depth);
    match n % 6 {
        0 => {
            body[key] = value;
            Planted::Enqueued(body)
        }
        1 => {
            body["location"] = holder;
            Planted::Enqueued(body)
        }
        2 => {
            body["resolution_notes"] = json!(holder.to_string());
            Planted::Enqueued(body)
        }
        3 => {
            // The whole payload as JSON text, the key's `_` escaped.
            body[&key] = value;
            let escaped = body.to_string().replace(&key, &key.replace('_', "\\u005f"));
            Planted::Enqueued(json!(escaped))
        }
        4 => {
            body["location"] = holder;
            Planted::Notified(body.to_string())
        }
        _ => {
            // Unparsable: cut short after the secret.
            body[&key] = value;
            let text = body.to_string();
            let cut = text.find(MARK).map_or(text.len(), |at| at + MARK.len() + 8);
            Planted::Notified(text[..cut.min(text.len())].to_owned())
        }
    }
}

fn metrics(port: u16) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

async fn cli(env: &TestEnv, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .args(args)
        .envs(env.env_vars())
        .output()
        .await
        .expect("run itrelay");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn a_planted_secret_reaches_no_output() {
    let env = TestEnv::new().await;
    env.seed().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_run(
        &env,
        "trace",
        &[
            ("ITRELAY__RELAY__ACCEPT_NOTIFY_EVENTS", "true"),
            ("ITRELAY__HTTP__ENABLED", "true"),
            ("ITRELAY__HTTP__LISTEN", &listen),
        ],
    );
    let log = read_stderr(&mut child);

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let planted: Vec<Planted> = (1..=36).map(|n| plant(&mut rng, n)).collect();
    let payloads: Vec<&Value> = planted
        .iter()
        .filter_map(|event| match event {
            Planted::Enqueued(payload) => Some(payload),
            Planted::Notified(_) => None,
        })
        .collect();
    // Half one at a time (the API), half in one call, as a statement trigger records its
    // rows' events.
    let (one_by_one, together) = payloads.split_at(payloads.len() / 2);
    for payload in one_by_one {
        env.client
            .execute(
                "SELECT itrelay.enqueue('it_ticket_status_changed', 'it_tickets', $1::jsonb)",
                &[payload],
            )
            .await
            .expect("enqueue");
    }
    env.client
        .execute(
            "SELECT itrelay.enqueue_events('it_tickets', array_agg(
                 ROW('it_ticket_status_changed', p)::itrelay.new_event ORDER BY n))
             FROM unnest($1::jsonb[]) WITH ORDINALITY AS u (p, n)",
            &[&together],
        )
        .await
        .expect("enqueue_events");
    let enqueued = payloads.len() as i64;
    // Once those are through, the relay listens: the notifications are not missed.
    env.wait_until_settled(enqueued).await;
    let mut total = enqueued;
    for event in &planted {
        if let Planted::Notified(text) = event {
            env.client
                .execute("SELECT pg_notify('it_events', $1)", &[text])
                .await
                .expect("notify");
            total += 1;
        }
    }
    env.wait_until_settled(total).await;
    let states = env.outbox_states().await;
    assert!(
        states.get("delivered").is_some_and(|&n| n > 0),
        "{states:?}"
    );
    assert!(states.get("failed").is_some_and(|&n| n > 0), "{states:?}");

    let mut outputs: Vec<(String, String)> = Vec::new();
    for message in env.drain_all().await.into_values().flatten() {
        let shown = format!(
            "{} {:?}",
            String::from_utf8_lossy(&message.raw_body),
            message.properties
        );
        outputs.push((format!("message on {}", message.exchange), shown));
    }
    let rows = env
        .client
        .query(
            "SELECT payload::text || ' ' || coalesce(last_error, '') FROM itrelay.outbox",
            &[],
        )
        .await
        .expect("outbox rows");
    for row in rows {
        outputs.push(("outbox row".into(), row.get(0)));
    }
    outputs.push(("/metrics".into(), metrics(port)));
    outputs.push((
        "itrelay dead-letters".into(),
        cli(&env, &["dead-letters"]).await,
    ));
    outputs.push((
        "itrelay dead-letters --json".into(),
        cli(&env, &["dead-letters", "--json"]).await,
    ));
    outputs.push(("itrelay status".into(), cli(&env, &["status"]).await));
    child.start_kill().expect("stop the relay");
    child.wait().await.expect("relay stops");
    let log = log.await.expect("relay log");
    assert!(log.contains("TRACE"), "trace logging was not on");
    assert!(outputs.iter().any(|(what, _)| what == "/metrics"));
    assert!(
        outputs
            .iter()
            .any(|(what, text)| what == "/metrics" && text.contains("itrelay_")),
        "no metrics were read"
    );
    outputs.push(("log at trace".into(), log));
    for (what, text) in &outputs {
        assert!(
            !text.contains(MARK),
            "the secret reached the {what}:\n{text}"
        );
    }
}
