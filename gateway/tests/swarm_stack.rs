//! `swarm-stack.yml` is the product's deployment; with no Docker engine
//! here, these checks are how it stays right: the invariants that bite in
//! production, and Docker's own schema check (`docker stack config`).

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
    assert_eq!(stack["networks"]["backend"]["internal"], true);
    assert_eq!(stack["networks"]["backend"]["driver"], "overlay");
    for (name, service) in services(&stack) {
        let nets = names(&service["networks"]);
        match name.as_str() {
            "redis" | "mongo" => assert_eq!(nets, BTreeSet::from(["backend".to_string()]), "{name}"),
            "app" => assert!(nets.contains("backend") && nets.contains("frontend"), "{nets:?}"),
            "gateway" => {
                assert!(!nets.contains("backend"), "the gateway must not reach the stores");
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
    let app_env = &stack["services"]["app"]["environment"];
    for var in ["MONGODB_URI_FILE", "REDIS_PASSWORD_FILE", "API_TOKEN_FILE"] {
        let path = app_env[var].as_str().unwrap_or_else(|| panic!("app sets {var}"));
        assert!(path.starts_with("/run/secrets/"), "{var}={path}");
    }
    for var in ["MONGODB_URI", "REDIS_PASSWORD", "API_TOKEN"] {
        assert!(app_env[var].is_null(), "{var} must come from a secret file");
    }
    let mongo_env = &stack["services"]["mongo"]["environment"];
    assert_eq!(
        mongo_env["MONGO_INITDB_ROOT_PASSWORD_FILE"],
        "/run/secrets/mongo_root_password"
    );
    assert!(mongo_env["MONGO_INITDB_ROOT_PASSWORD"].is_null());
    let redis_cmd = serde_yaml::to_string(&stack["services"]["redis"]["command"]).expect("yaml");
    assert!(redis_cmd.contains("/run/secrets/redis_password"), "{redis_cmd}");
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
    let config_file = stack["configs"]["gateway_toml"]["file"].as_str().expect("config file");
    // Certificates are secrets: validated against a generated pair.
    let (_dir, path) = common::committed_config(config_file);
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
    let app_grace = stack["services"]["app"]["environment"]["APP_SHUTDOWN_GRACE"]
        .as_str()
        .expect("grace");
    let app_grace = humantime::parse_duration(app_grace).expect("duration");
    assert!(seconds(&stack["services"]["app"]["stop_grace_period"]) > app_grace);
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
    let config_file = stack["configs"]["gateway_toml"]["file"].as_str().expect("config file");
    let (_dir, path) = common::committed_config(config_file);
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
