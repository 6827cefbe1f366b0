//! The container and service files, read against the binary they run (no Docker engine
//! or systemd here): every `itrelay` invocation names a subcommand and flags the binary
//! has, every `ITRELAY__*` variable is a key its configuration accepts, and every local
//! path the files copy or mount exists in the repository.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use itrelay::config::Settings;

/// Each file, the keys or instructions whose lines run commands, and the subcommands
/// it must run.
const FILES: &[(&str, &[&str], &[&str])] = &[
    (
        "Dockerfile",
        &["RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK"],
        &["run", "healthcheck"],
    ),
    (
        "docker-compose.yml",
        &["command:", "entrypoint:", "test:"],
        &["install", "run", "healthcheck"],
    ),
    (
        "deploy/itrelay.service",
        &["ExecStart", "ExecStartPre", "ExecReload"],
        &["run"],
    ),
];

/// Files whose only check is their `itrelay` invocations (their variables are checked
/// with their context, below).
const INVOKING: &[(&str, &[&str], &[&str])] = &[(KUBERNETES, &["command:", "args:"], &["run"])];

/// How the files name the binary (`/out/itrelay`: the Dockerfile's build stage).
const BINARY: &[&str] = &["itrelay", "/usr/local/bin/itrelay", "/out/itrelay"];

/// The Kubernetes manifest, checked by its own tests below.
const KUBERNETES: &str = "deploy/kubernetes/itrelay.yaml";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The file's lines without comments, continuation lines (`\`) joined.
fn lines(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut lines = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => pending.push_str(start),
            None => {
                pending.push_str(line);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    lines
}

/// A command line's words: the strings of its JSON array (exec form) if it has one,
/// else its whitespace-separated words; a leading `Key=` or `- ` is dropped.
fn words(line: &str) -> Vec<String> {
    if let (Some(start), Some(end)) = (line.find('['), line.rfind(']')) {
        if let Ok(items) = serde_json::from_str::<Vec<String>>(&line[start..=end]) {
            return items;
        }
    }
    let line = line.trim_start().trim_start_matches("- ");
    let line = match line.split_once('=') {
        Some((key, rest)) if !key.contains(char::is_whitespace) => rest,
        _ => line,
    };
    line.split_whitespace().map(str::to_owned).collect()
}

/// Every `itrelay ...` in the file's command lines: the arguments after the binary.
fn invocations(file: &str, command_keys: &[&str]) -> Vec<Vec<String>> {
    lines(file)
        .iter()
        .filter(|line| {
            let line = line.trim_start();
            command_keys.iter().any(|key| line.starts_with(key))
        })
        .flat_map(|line| {
            let words = words(line);
            let starts: Vec<usize> = (0..words.len())
                // Not the value of a flag, as in `cargo build --bin itrelay`.
                .filter(|&i| {
                    BINARY.contains(&words[i].as_str()) && !(i > 0 && words[i - 1].starts_with('-'))
                })
                .collect();
            starts
                .into_iter()
                .map(move |i| {
                    words[i + 1..]
                        .iter()
                        .take_while(|w| !["&&", "||", ";", "|"].contains(&w.as_str()))
                        .cloned()
                        .collect()
                })
                .collect::<Vec<Vec<String>>>()
        })
        .collect()
}

/// `itrelay ARGS --help`: its output, or why it failed.
fn help(args: &[&str]) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_itrelay"))
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Checks one invocation against the binary's help; its subcommand.
fn check_invocation(args: &[String]) -> Result<String, String> {
    let mut help_text = help(&[])?;
    let mut subcommand: Option<String> = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if let Some(flag) = arg.strip_prefix("--") {
            let (name, inline_value) = match flag.split_once('=') {
                Some((name, _)) => (name, true),
                None => (flag, false),
            };
            if !help_text.contains(&format!("--{name}")) {
                return Err(format!(
                    "flag --{name} is not in the help of {subcommand:?}"
                ));
            }
            if !inline_value && help_text.contains(&format!("--{name} <")) {
                rest.next();
            }
        } else if arg.starts_with('-') {
            return Err(format!("{arg}: write flags in their long form"));
        } else if subcommand.is_none() {
            help_text = help(&[arg]).map_err(|e| format!("no subcommand {arg:?}: {e}"))?;
            subcommand = Some(arg.clone());
        }
    }
    subcommand.ok_or_else(|| "no subcommand".to_owned())
}

#[test]
fn every_itrelay_invocation_exists_in_the_binary() {
    for (file, command_keys, expected) in FILES.iter().chain(INVOKING) {
        let mut found = BTreeSet::new();
        for args in invocations(file, command_keys) {
            let subcommand = check_invocation(&args)
                .unwrap_or_else(|e| panic!("{file}: `itrelay {}`: {e}", args.join(" ")));
            found.insert(subcommand);
        }
        for subcommand in *expected {
            assert!(
                found.contains(*subcommand),
                "{file}: no `itrelay {subcommand}` found (found {found:?})"
            );
        }
    }
}

/// Every `ITRELAY__*` variable set in the file's lines, with its value.
fn variables(file: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in lines(file) {
        let mut text = line.as_str();
        while let Some(start) = text.find("ITRELAY__") {
            let tail = &text[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let (name, after) = tail.split_at(end);
            let value = after
                .strip_prefix('=')
                .or_else(|| after.strip_prefix(':'))
                .map(|v| v.split_whitespace().next().unwrap_or(""))
                .unwrap_or("")
                .trim_matches('"');
            found.push((name.to_owned(), value.to_owned()));
            text = &tail[end..];
        }
    }
    found
}

#[test]
fn every_itrelay_variable_is_a_configuration_key() {
    // Files named by `*_FILE` variables exist only where the service runs: a stand-in.
    let stand_in = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-files-secret");
    std::fs::write(&stand_in, "placeholder\n").expect("stand-in file");
    let mut checked = 0;
    for (file, _, _) in FILES {
        for (name, value) in variables(file) {
            let value = if name.ends_with("_FILE") {
                stand_in.display().to_string()
            } else {
                value
            };
            let env = HashMap::from([(name.clone(), value.clone())]);
            if let Err(error) = Settings::load_with_env(None, Some(env)) {
                panic!("{file}: {name}={value}: {error}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} variables found");
}

#[test]
fn every_local_path_copied_or_mounted_exists() {
    let mut paths = Vec::new();
    for line in lines("Dockerfile") {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"COPY") && !words.iter().any(|w| w.starts_with("--from")) {
            let sources = &words[1..words.len() - 1];
            paths.extend(sources.iter().map(|s| s.to_string()));
        }
    }
    for line in lines("docker-compose.yml") {
        for word in line.split_whitespace() {
            if let Some(path) = word.strip_prefix("./") {
                paths.push(path.split(':').next().unwrap_or(path).to_owned());
            }
        }
    }
    assert!(paths.len() >= 8, "only {paths:?} found");
    for path in paths {
        assert!(
            repo(&path).exists(),
            "{path} does not exist in the repository"
        );
    }
}

/// The value of a `key: value` line, unquoted.
fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line
        .trim_start()
        .trim_start_matches("- ")
        .strip_prefix(key)?;
    Some(rest.strip_prefix(':')?.trim().trim_matches('"'))
}

/// Every value of `key` in the manifest, in order.
fn values(manifest: &[String], key: &str) -> Vec<String> {
    manifest
        .iter()
        .filter_map(|line| value_of(line, key))
        .map(str::to_owned)
        .collect()
}

/// The manifest's `- name: ITRELAY__...` entries with the `value:` that follows each.
fn container_env(manifest: &[String]) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (i, line) in manifest.iter().enumerate() {
        if let Some(name) = value_of(line, "name").filter(|n| n.starts_with("ITRELAY__")) {
            let value = manifest
                .get(i + 1)
                .and_then(|next| value_of(next, "value"))
                .unwrap_or_else(|| panic!("{KUBERNETES}: {name} has no value on the next line"));
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    env
}

/// The block scalar under `key: |`: its lines, de-indented.
fn block(manifest: &[String], key: &str) -> String {
    let start = manifest
        .iter()
        .position(|line| line.trim() == format!("{key}: |"))
        .unwrap_or_else(|| panic!("{KUBERNETES}: no {key}: |"));
    let indent = |line: &str| line.len() - line.trim_start().len();
    let outer = indent(&manifest[start]);
    manifest[start + 1..]
        .iter()
        .take_while(|line| line.trim().is_empty() || indent(line) > outer)
        .map(|line| line.get(outer + 2..).unwrap_or("").to_owned() + "\n")
        .collect()
}

#[test]
fn kubernetes_manifest_configures_the_binary_it_runs() {
    let manifest = lines(KUBERNETES);
    // The command names a configuration file that a mount provides.
    let invocation = &invocations(KUBERNETES, &["command:"])[0];
    let config = invocation
        .iter()
        .skip_while(|arg| *arg != "--config")
        .nth(1)
        .expect("--config FILE");
    let mounts = values(&manifest, "mountPath");
    assert!(
        mounts.contains(config),
        "{config} is not mounted: {mounts:?}"
    );

    // The ConfigMap's file and the container's variables load as a configuration.
    let stand_in = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubernetes-secret");
    std::fs::write(&stand_in, "placeholder\n").unwrap();
    let toml = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubernetes-itrelay.toml");
    std::fs::write(&toml, block(&manifest, "itrelay.toml")).unwrap();
    let mut env = container_env(&manifest);
    assert!(env.len() >= 3, "{env:?}");
    for (name, value) in env.iter_mut() {
        if name.ends_with("_FILE") {
            let dir = Path::new(value.as_str())
                .parent()
                .unwrap()
                .display()
                .to_string();
            assert!(
                mounts.contains(&dir),
                "{name}={value}: {dir} is not mounted"
            );
            *value = stand_in.display().to_string();
        }
    }
    let settings = Settings::load_with_env(Some(&toml), Some(env))
        .unwrap_or_else(|e| panic!("{KUBERNETES}: {e}"));

    // The endpoint listens on the container's port, facing the pod network.
    let listen = settings.http.address().unwrap();
    assert!(
        settings.http.enabled && listen.ip().is_unspecified(),
        "{listen}"
    );
    assert_eq!(
        values(&manifest, "containerPort"),
        [listen.port().to_string()]
    );

    // Probes: alive on /healthz, ready on /readyz.
    let probe_path = |probe: &str| {
        let at = manifest
            .iter()
            .position(|line| line.trim() == format!("{probe}:"))
            .unwrap_or_else(|| panic!("no {probe}"));
        manifest[at..]
            .iter()
            .find_map(|line| value_of(line, "path"))
            .unwrap()
            .to_owned()
    };
    assert_eq!(probe_path("livenessProbe"), "/healthz");
    assert_eq!(probe_path("readinessProbe"), "/readyz");

    // Non-root, as the image's numeric user.
    assert_eq!(values(&manifest, "runAsNonRoot"), ["true"]);
    assert_eq!(values(&manifest, "runAsUser"), ["65532"]);
    assert!(lines("Dockerfile")
        .iter()
        .any(|l| l.trim() == "USER 65532:65532"));
}

#[tokio::test]
async fn every_probed_path_is_served() {
    let mut paths = values(&lines(KUBERNETES), "path");
    paths.sort();
    paths.dedup();
    assert_eq!(paths, ["/healthz", "/readyz"]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let health = itrelay::health::Health::default();
    let server = itrelay::http::bind(address, health, shutdown.clone())
        .await
        .unwrap();
    let running = tokio::spawn(server);
    for path in paths {
        let status = itrelay::http::probe(address, &path).await.unwrap();
        // Not ready (no services here) is an answer; 404 is a wrong path.
        assert!([200, 503].contains(&status), "{path}: {status}");
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[test]
fn images_are_pinned_labelled_and_ship_what_consumers_need() {
    let dockerfile = lines("Dockerfile");
    let from: Vec<&String> = dockerfile
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(from.len(), 2);
    for line in from {
        let image = line.split_whitespace().nth(1).unwrap();
        let digest = image.split_once("@sha256:").map_or("", |(_, d)| d);
        assert!(
            digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "not pinned by digest: {line}"
        );
    }
    let text = dockerfile.join("\n");
    for label in ["title", "version", "revision", "licenses"] {
        let key = format!("org.opencontainers.image.{label}=");
        assert!(text.contains(&key), "no {key} label");
    }
    for shipped in [
        "COPY --from=build /out/schemas /usr/share/itrelay/schemas",
        "/usr/share/itrelay/asyncapi.json",
    ] {
        assert!(text.contains(shipped), "the image does not ship {shipped}");
    }
    // Dependencies build in a layer before the sources are copied.
    let first_build = text.find("cargo build").unwrap();
    assert!(first_build < text.find("COPY src").unwrap());

    let compose = lines("docker-compose.yml");
    for image in values(&compose, "image") {
        let tag = image.rsplit_once(':').map_or("", |(_, tag)| tag);
        let local = image.starts_with("itrelay:");
        assert!(
            local || (tag.contains('.') && tag != "latest"),
            "not a pinned tag: {image}"
        );
    }
    let compose_text = compose.join("\n");
    assert!(
        compose_text.contains(r#""pg_isready", "-h""#),
        "pg_isready without -h: the init server on the socket counts as ready"
    );
    assert!(
        compose_text.contains(":5672:5672"),
        "the broker port is not published"
    );
}
