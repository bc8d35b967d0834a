//! `swarm-stack.yml` is the product's deployment. `scripts/swarm-e2e.sh`
//! deploys it for real (in CI); these checks keep it right without an
//! engine: the invariants that bite in production (several found by that
//! deploy), and Docker's own schema check (`docker stack config`).
//! The gateway configuration it ships (`gateway_toml`) is checked with it,
//! including `[rate_limit.shared]` and the `limits-redis` it points at.

mod common;

use gateway::config::GatewayConfig;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stack() -> Value {
    let text = std::fs::read_to_string(root().join("swarm-stack.yml")).expect("swarm-stack.yml");
    serde_yaml::from_str(&text).expect("valid YAML")
}

fn services(stack: &Value) -> Vec<(String, Value)> {
    stack["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("name").to_string(), v.clone()))
        .collect()
}

fn names(v: &Value) -> BTreeSet<String> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i["source"].as_str().expect("source").to_string())
            })
            .collect(),
        Value::Mapping(m) => m.keys().map(|k| k.as_str().expect("key").to_string()).collect(),
        _ => BTreeSet::new(),
    }
}

fn declared(stack: &Value, section: &str) -> BTreeSet<String> {
    names(&stack[section])
}

fn seconds(v: &Value) -> Duration {
    humantime::parse_duration(v.as_str().expect("a duration")).expect("a duration")
}

/// The gateway configuration file the stack ships (the `gateway_toml`
/// config), relative to the repository root.
fn shipped_config_file(stack: &Value) -> String {
    let file = stack["configs"]["gateway_toml"]["file"].as_str().expect("config file");
    file.trim_start_matches("./").to_string()
}

/// That file parsed as plain TOML.
fn shipped_config_table(stack: &Value) -> toml::Table {
    let file = shipped_config_file(stack);
    std::fs::read_to_string(root().join(&file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .parse()
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Where each secret the service mounts appears in its container
/// (`/run/secrets/TARGET`, TARGET the source's name unless given).
fn secret_paths(service: &Value) -> BTreeSet<String> {
    service["secrets"]
        .as_sequence()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let target = s
                .as_str()
                .or_else(|| s["target"].as_str())
                .or_else(|| s["source"].as_str());
            let target = target.expect("a secret name");
            if target.starts_with('/') {
                target.to_string()
            } else {
                format!("/run/secrets/{target}")
            }
        })
        .collect()
}

/// The documented shape of the `gateway_redis_url` secret's content.
const EXAMPLE_REDIS_URL: &str =
    "redis://:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef@limits-redis:6379/0\n";

/// The shipped configuration, ready to load here: certificates as in
/// [`common::committed_config`], and the Redis URL secret (which exists
/// only inside the stack) written into the temporary directory.
fn deployed_config(stack: &Value) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = common::committed_config(&shipped_config_file(stack));
    let table = shipped_config_table(stack);
    if let Some(secret) = table
        .get("rate_limit")
        .and_then(|r| r.get("shared"))
        .and_then(|s| s.get("redis_url_file"))
        .and_then(toml::Value::as_str)
    {
        let local = dir.path().join("gateway_redis_url");
        std::fs::write(&local, EXAMPLE_REDIS_URL).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace(secret, &local.display().to_string())).expect("write");
    }
    (dir, path)
}

fn redis_command(stack: &Value, service: &str) -> String {
    stack["services"][service]["command"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{service} has a command"))
        .iter()
        .map(|v| v.as_str().expect("text"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn only_the_gateway_publishes_ports_and_only_in_host_mode() {
    let stack = stack();
    for (name, service) in services(&stack) {
        let ports = service["ports"].as_sequence().cloned().unwrap_or_default();
        if name == "gateway" {
            let published: BTreeSet<u64> = ports
                .iter()
                .map(|p| p["published"].as_u64().expect("published"))
                .collect();
            assert_eq!(published, BTreeSet::from([80, 443]));
            for p in &ports {
                assert_eq!(p["mode"], "host", "the routing mesh would hide client addresses: {p:?}");
            }
            assert_eq!(service["deploy"]["mode"], "global");
        } else {
            assert!(ports.is_empty(), "{name} publishes ports");
        }
    }
}

#[test]
fn stores_live_on_an_internal_network_only() {
    let stack = stack();
    for network in ["backend", "limits"] {
        assert_eq!(
            stack["networks"][network]["internal"], true,
            "{network} must be internal"
        );
        assert_eq!(stack["networks"][network]["driver"], "overlay", "{network}");
    }
    for (name, service) in services(&stack) {
        let nets = names(&service["networks"]);
        match name.as_str() {
            "redis" | "mongo" => assert_eq!(nets, BTreeSet::from(["backend".to_string()]), "{name}"),
            "limits-redis" => assert_eq!(nets, BTreeSet::from(["limits".to_string()]), "{name}"),
            // Import workers serve nothing to the gateway: stores only.
            "worker" => assert_eq!(nets, BTreeSet::from(["backend".to_string()]), "{name}"),
            "app" => {
                assert!(nets.contains("backend") && nets.contains("frontend"), "{nets:?}");
                assert!(!nets.contains("limits"), "the app must not reach the rate-limit state");
            }
            "gateway" => {
                assert!(!nets.contains("backend"), "the gateway must not reach the stores");
                assert!(nets.contains("limits"), "the gateway must reach limits-redis");
                let app_nets = names(&stack["services"]["app"]["networks"]);
                assert!(
                    nets.iter().any(|n| app_nets.contains(n)),
                    "the gateway shares no network with the app"
                );
            }
            other => panic!("unexpected service {other}"),
        }
    }
}

#[test]
fn only_the_gateway_and_its_redis_share_the_limits_network() {
    let stack = stack();
    let on_limits: BTreeSet<String> = services(&stack)
        .into_iter()
        .filter(|(_, s)| names(&s["networks"]).contains("limits"))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        on_limits,
        BTreeSet::from(["gateway".to_string(), "limits-redis".to_string()])
    );
}

#[test]
fn the_limit_store_is_private_ephemeral_and_bounded() {
    let stack = stack();
    let redis = &stack["services"]["limits-redis"];
    assert!(redis.is_mapping(), "the stack has a limits-redis service");
    assert_eq!(
        redis["image"], stack["services"]["redis"]["image"],
        "one Redis image in the stack"
    );
    assert!(
        redis["ports"].as_sequence().is_none_or(Vec::is_empty),
        "limits-redis publishes ports"
    );
    assert!(
        redis["volumes"].as_sequence().is_none_or(Vec::is_empty),
        "limits-redis needs no volume: its state is worth one burst"
    );
    assert_eq!(redis["deploy"]["replicas"], 1);
    assert_ne!(redis["deploy"]["mode"], "global");

    let command = redis_command(&stack, "limits-redis");
    for flag in [
        "--requirepass \"$$(cat /run/secrets/limits_redis_password)\"",
        "--save \"\"",
        "--appendonly no",
        "--maxmemory-policy volatile-ttl",
    ] {
        assert!(command.contains(flag), "limits-redis lacks {flag}: {command}");
    }
    for persistence in [
        "--appendonly yes",
        "--save 60",
        "--dir",
        "--dbfilename",
        "--appendfilename",
    ] {
        assert!(!command.contains(persistence), "limits-redis persists: {command}");
    }
    assert_eq!(
        names(&redis["secrets"]),
        BTreeSet::from(["limits_redis_password".to_string()])
    );

    // The cap is below the container's limit, so Redis evicts before the
    // kernel kills it.
    let cap = command
        .split("--maxmemory ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("limits-redis has no --maxmemory: {command}"));
    let cap: u64 = cap
        .strip_suffix("mb")
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| n << 20)
        .unwrap_or_else(|| panic!("--maxmemory {cap}: write it in mb"));
    let limit = redis["deploy"]["resources"]["limits"]["memory"]
        .as_str()
        .expect("memory limit");
    let limit: u64 = limit
        .strip_suffix('M')
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| n << 20)
        .unwrap_or_else(|| panic!("memory limit {limit}: write it in M"));
    assert!(cap * 5 <= limit * 4, "--maxmemory must leave Redis's own overhead room");
}

#[test]
fn the_gateway_shares_its_limits_through_a_secret_url_it_mounts() {
    let stack = stack();
    let gateway = &stack["services"]["gateway"];
    assert!(
        names(&gateway["secrets"]).contains("gateway_redis_url"),
        "the gateway mounts the gateway_redis_url secret"
    );
    // Credentials stay with the service they open.
    assert!(!names(&gateway["secrets"]).contains("redis_password"));
    assert!(!names(&gateway["secrets"]).contains("limits_redis_password"));
    for secret in ["gateway_redis_url", "limits_redis_password"] {
        assert!(
            !names(&stack["services"]["app"]["secrets"]).contains(secret),
            "app has {secret}"
        );
    }

    let file = shipped_config_file(&stack);
    let table = shipped_config_table(&stack);
    let shared = table
        .get("rate_limit")
        .and_then(|r| r.get("shared"))
        .and_then(toml::Value::as_table)
        .unwrap_or_else(|| panic!("{file} has no [rate_limit.shared]"));
    assert!(
        shared.get("redis_url").is_none(),
        "{file}: the Redis URL holds a password; give redis_url_file"
    );
    let url_file = shared
        .get("redis_url_file")
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{file}: no rate_limit.shared.redis_url_file"));
    assert!(url_file.starts_with("/run/secrets/"), "{url_file} is not a secret");
    let mounted = secret_paths(gateway);
    assert!(
        mounted.contains(url_file),
        "{url_file} is none of the gateway's secrets {mounted:?}"
    );

    // The shipped file loads with a URL of the documented shape, and every
    // policy is shared (none opts out).
    let (_dir, path) = deployed_config(&stack);
    let config = GatewayConfig::load(&path).expect("the deployed config is valid");
    let shared = config.rate_limit.shared.as_ref().expect("[rate_limit.shared]");
    let url = shared.resolve_url().expect("the documented URL is accepted");
    assert!(url.contains("@limits-redis:6379/"), "{url}");
    assert!(stack["services"]["limits-redis"].is_mapping());
    assert!(!config.rate_limits.is_empty(), "the deployed gateway limits");
    for (name, policy) in &config.rate_limits {
        assert_ne!(policy.shared, Some(false), "{name} is not shared across nodes");
    }
}

/// The tests that check `gateway.example.toml` (its validity, its
/// connection cap against the stack's memory limit) speak for the shipped
/// file only while the two agree apart from `[rate_limit.shared]`.
#[test]
fn the_shipped_config_is_the_example_plus_the_shared_limits() {
    let stack = stack();
    let file = shipped_config_file(&stack);
    if file == "gateway.example.toml" {
        return;
    }
    let mut shipped = shipped_config_table(&stack);
    let rate_limit = shipped
        .get_mut("rate_limit")
        .and_then(toml::Value::as_table_mut)
        .expect("[rate_limit]");
    rate_limit.remove("shared");
    if rate_limit.is_empty() {
        shipped.remove("rate_limit");
    }
    let example: toml::Table = std::fs::read_to_string(root().join("gateway.example.toml"))
        .expect("gateway.example.toml")
        .parse()
        .expect("toml");
    assert_eq!(
        shipped, example,
        "{file} must be gateway.example.toml plus [rate_limit.shared]"
    );
}

#[test]
fn everything_referenced_is_declared() {
    let stack = stack();
    for (name, service) in services(&stack) {
        for (section, top) in [("secrets", "secrets"), ("configs", "configs"), ("networks", "networks")] {
            let used = names(&service[section]);
            let have = declared(&stack, top);
            assert!(
                used.is_subset(&have),
                "{name}: {section} {used:?} not all declared in {have:?}"
            );
        }
        for volume in service["volumes"].as_sequence().cloned().unwrap_or_default() {
            let source = volume
                .as_str()
                .expect("short syntax")
                .split(':')
                .next()
                .expect("source")
                .to_string();
            assert!(
                declared(&stack, "volumes").contains(&source),
                "{name}: volume {source} not declared"
            );
        }
    }
}

#[test]
fn the_app_rolls_out_start_first_and_rolls_back_on_failure() {
    let stack = stack();
    let app = &stack["services"]["app"];
    assert_eq!(app["deploy"]["replicas"], 3);
    let update = &app["deploy"]["update_config"];
    assert_eq!(
        (update["parallelism"].as_u64(), update["order"].as_str()),
        (Some(1), Some("start-first"))
    );
    assert_eq!(update["failure_action"], "rollback");
    assert!(seconds(&update["monitor"]) >= Duration::from_secs(10));
    assert!(app["deploy"]["rollback_config"].is_mapping());
    let gateway = &stack["services"]["gateway"];
    assert_eq!(
        gateway["deploy"]["update_config"]["order"], "stop-first",
        "host ports cannot be shared by two tasks"
    );
}

#[test]
fn every_service_has_a_healthcheck_resource_limits_and_a_restart_policy() {
    let stack = stack();
    for (name, service) in services(&stack) {
        assert!(service["healthcheck"]["test"].is_sequence(), "{name}: no healthcheck");
        let limits = &service["deploy"]["resources"]["limits"];
        assert!(
            limits["memory"].is_string() && limits["cpus"].is_string(),
            "{name}: no resource limits"
        );
        assert!(
            service["deploy"]["restart_policy"]["condition"].is_string(),
            "{name}: no restart policy"
        );
    }
}

#[test]
fn secrets_reach_the_processes_through_files_only() {
    let stack = stack();
    for (service, files) in [
        (
            "app",
            &["MONGODB_URI_FILE", "REDIS_PASSWORD_FILE", "API_TOKEN_FILE"][..],
        ),
        ("worker", &["MONGODB_URI_FILE", "REDIS_PASSWORD_FILE"][..]),
    ] {
        let env = &stack["services"][service]["environment"];
        for var in files {
            let path = env[var].as_str().unwrap_or_else(|| panic!("{service} sets {var}"));
            assert!(path.starts_with("/run/secrets/"), "{service}: {var}={path}");
        }
        for var in ["MONGODB_URI", "REDIS_PASSWORD", "API_TOKEN"] {
            assert!(env[var].is_null(), "{service}: {var} must come from a secret file");
        }
    }
    let mongo_env = &stack["services"]["mongo"]["environment"];
    assert_eq!(
        mongo_env["MONGO_INITDB_ROOT_PASSWORD_FILE"],
        "/run/secrets/mongo_root_password"
    );
    assert!(mongo_env["MONGO_INITDB_ROOT_PASSWORD"].is_null());
    let redis_cmd = serde_yaml::to_string(&stack["services"]["redis"]["command"]).expect("yaml");
    assert!(redis_cmd.contains("/run/secrets/redis_password"), "{redis_cmd}");
    let limits_cmd = redis_command(&stack, "limits-redis");
    assert!(
        limits_cmd.contains("/run/secrets/limits_redis_password"),
        "{limits_cmd}"
    );
    for secret in declared(&stack, "secrets") {
        assert_eq!(
            stack["secrets"][secret.as_str()]["external"],
            true,
            "{secret} must be created out of band"
        );
    }
}

#[test]
fn the_gateway_config_discovers_the_app_tasks_and_drains_within_the_stop_grace() {
    let stack = stack();
    // Certificates and the Redis URL are secrets: validated against a
    // generated pair and an example URL.
    let (_dir, path) = deployed_config(&stack);
    let config = GatewayConfig::load(&path).expect("the deployed config is valid");

    let app_port = stack["services"]["app"]["environment"]["APP_LISTEN"]
        .as_str()
        .expect("APP_LISTEN");
    let app_port = app_port.rsplit(':').next().expect("port");
    let discovered: Vec<&str> = config
        .upstreams
        .values()
        .filter_map(|u| u.discover.as_deref())
        .collect();
    assert!(
        discovered.contains(&format!("tasks.app:{app_port}").as_str()),
        "{discovered:?}"
    );

    let gateway = &stack["services"]["gateway"];
    assert!(
        seconds(&gateway["stop_grace_period"]) > config.server.shutdown_grace,
        "SIGKILL would cut the drain"
    );
    let targets: BTreeSet<u64> = gateway["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| p["target"].as_u64().expect("target"))
        .collect();
    let listening: BTreeSet<u64> = [config.https_listener(), config.http_listener()]
        .into_iter()
        .flatten()
        .map(|a| u64::from(a.port()))
        .collect();
    assert_eq!(targets, listening, "published ports must reach the gateway's listeners");
    for service in ["app", "worker"] {
        let grace = stack["services"][service]["environment"]["APP_SHUTDOWN_GRACE"]
            .as_str()
            .unwrap_or_else(|| panic!("{service} sets APP_SHUTDOWN_GRACE"));
        let grace = humantime::parse_duration(grace).expect("duration");
        assert!(
            seconds(&stack["services"][service]["stop_grace_period"]) > grace,
            "{service}: SIGKILL would cut the drain"
        );
    }
}

/// The `worker` service runs `app worker` from the app's image on the
/// app's store and queue; it has no API listener, so its healthcheck must
/// probe the admin listener, and it must run at least one worker (`app
/// worker` refuses to start with `APP_WORKER_CONCURRENCY=0`).
#[test]
fn the_worker_service_runs_app_worker_on_the_apps_store_and_queue() {
    let stack = stack();
    let (app, worker) = (&stack["services"]["app"], &stack["services"]["worker"]);
    assert!(worker.is_mapping(), "the stack has a worker service");
    assert_eq!(worker["image"], app["image"], "the worker is the app's image");
    // The app image's ENTRYPOINT is the binary: the command is its arguments.
    let command: Vec<&str> = worker["command"]
        .as_sequence()
        .expect("the worker has a command")
        .iter()
        .map(|v| v.as_str().expect("text"))
        .collect();
    assert_eq!(command, ["worker"]);
    let test: Vec<&str> = worker["healthcheck"]["test"]
        .as_sequence()
        .expect("the worker has a healthcheck")
        .iter()
        .map(|v| v.as_str().expect("text"))
        .collect();
    assert_eq!(test, ["CMD", "/usr/local/bin/app", "healthcheck", "--admin"]);
    let concurrency: u64 = worker["environment"]["APP_WORKER_CONCURRENCY"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .expect("the worker sets APP_WORKER_CONCURRENCY");
    assert!(concurrency >= 1, "app worker needs APP_WORKER_CONCURRENCY >= 1");
    // The same jobs and the same queue as the API replicas.
    for var in ["MONGODB_URI_FILE", "MONGODB_DATABASE", "REDIS_URL", "REDIS_KEY_PREFIX"] {
        assert_eq!(
            worker["environment"][var], app["environment"][var],
            "worker and app differ on {var}"
        );
    }
    let update = &worker["deploy"]["update_config"];
    assert_eq!(update["order"], "start-first");
    assert_eq!(update["failure_action"], "rollback");
    assert!(worker["deploy"]["rollback_config"].is_mapping());
    assert!(
        !names(&worker["secrets"]).contains("api_token"),
        "the worker serves no API: it needs no write token"
    );
}

#[test]
fn the_app_container_probes_liveness_and_the_gateway_probes_readiness() {
    let stack = stack();
    let test: Vec<&str> = stack["services"]["app"]["healthcheck"]["test"]
        .as_sequence()
        .expect("the app has a healthcheck")
        .iter()
        .map(|v| v.as_str().expect("text"))
        .collect();
    // `app healthcheck` probes /healthz; `--ready` would probe /readyz and
    // get every replica restarted during a store outage.
    assert_eq!(
        test,
        ["CMD", "/usr/local/bin/app", "healthcheck"],
        "the app's container healthcheck must probe liveness"
    );
    let (_dir, path) = deployed_config(&stack);
    let config = GatewayConfig::load(&path).expect("the deployed config is valid");
    let app = config
        .upstreams
        .values()
        .find(|u| u.discover.as_deref().is_some_and(|d| d.starts_with("tasks.app:")))
        .expect("an upstream discovers the app tasks");
    assert_eq!(
        app.health.as_ref().map(|h| h.path.as_str()),
        Some("/readyz"),
        "the gateway's active health checks must probe the app's readiness"
    );
}

#[test]
fn docker_accepts_the_stack_file() {
    let out = std::process::Command::new("docker")
        .args(["stack", "config", "-c"])
        .arg(root().join("swarm-stack.yml"))
        .output()
        .expect("the docker CLI is installed (no engine needed)");
    assert!(
        out.status.success(),
        "docker stack config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn private_keys_can_never_be_committed() {
    let ignore = std::fs::read_to_string(root().join(".gitignore")).expect(".gitignore");
    for pattern in ["*.key", "certs/*.pem", "certs/dev/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == pattern),
            "{pattern} missing from .gitignore"
        );
    }
}

/// The `ENTRYPOINT` of the production Dockerfile's `stage`, as a list.
fn dockerfile_entrypoint(stage: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let mut inside = false;
    let mut entrypoint = None;
    for line in text.lines() {
        if line.starts_with("FROM ") {
            inside = line.split_whitespace().last() == Some(stage);
        } else if inside && let Some(json) = line.strip_prefix("ENTRYPOINT ") {
            entrypoint = Some(serde_json::from_str(json).expect("ENTRYPOINT in exec form"));
        }
    }
    entrypoint.unwrap_or_else(|| panic!("the {stage} stage has an ENTRYPOINT"))
}

/// What each service runs is its image's ENTRYPOINT followed by its
/// `command`: the command must not repeat an argument the entrypoint
/// already gives. (The gateway's image once had `--config` in both, and
/// the deployed gateway exited at once: "the argument '--config' cannot
/// be used multiple times".)
#[test]
fn each_service_command_completes_its_images_entrypoint() {
    let stack = stack();
    for (service, stage) in [("gateway", "gateway"), ("app", "app"), ("worker", "app")] {
        let entrypoint = dockerfile_entrypoint(stage);
        let command: Vec<String> = stack["services"][service]["command"]
            .as_sequence()
            .map(|c| c.iter().map(|v| v.as_str().expect("text").to_string()).collect())
            .unwrap_or_default();
        let argv: Vec<&String> = entrypoint.iter().chain(&command).collect();
        assert_eq!(
            argv[0],
            &format!("/usr/local/bin/{stage}"),
            "{service}: runs the binary"
        );
        for flag in argv.iter().filter(|a| a.starts_with("--")) {
            let times = argv.iter().filter(|a| a == &flag).count();
            assert_eq!(times, 1, "{service}: {flag} given {times} times: {argv:?}");
        }
        if service == "gateway" {
            assert!(argv.contains(&&"--config".to_string()), "gateway: {argv:?}");
        }
    }
}

/// Every service reached by name is resolved to its tasks' own addresses
/// (`endpoint_mode: dnsrr`), never through a virtual IP (IPVS), which
/// drops connections idle for 900 s and which not every engine has (on
/// the engine this stack was first deployed on, connections to the VIPs of
/// `mongo` and `redis` timed out). The gateway, reached only on its
/// host-mode ports, is the exception.
#[test]
fn services_behind_the_gateway_are_resolved_by_dns_round_robin() {
    let stack = stack();
    for (name, service) in services(&stack) {
        if name == "gateway" {
            continue;
        }
        assert_eq!(
            service["deploy"]["endpoint_mode"], "dnsrr",
            "{name}: endpoint_mode must be dnsrr"
        );
    }
}
