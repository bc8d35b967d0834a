//! The README's gateway configuration table is the reference; this test
//! keeps it and the code in step: every key the configuration types have is
//! documented, and every documented key exists.

mod common;

use gateway::config::GatewayConfig;
use std::collections::BTreeSet;

/// Keys of the configuration types, found by serializing configurations
/// in which every optional part is present (the Redis URL given either
/// way).
fn keys_of_the_types() -> BTreeSet<String> {
    let dir = tempfile::tempdir().expect("dir");
    let url_file = dir.path().join("redis_url");
    std::fs::write(&url_file, "redis://127.0.0.1:6379\n").expect("write");
    let mut keys = keys_of(dir.path(), "redis_url = \"redis://127.0.0.1:6379\"");
    keys.extend(keys_of(
        dir.path(),
        &format!("redis_url_file = \"{}\"", url_file.display()),
    ));
    keys
}

fn keys_of(dir: &std::path::Path, redis: &str) -> BTreeSet<String> {
    common::dev_cert(dir);
    let text = format!(
        r#"
[server]
https = "127.0.0.1:0"
redirect_https_port = 443
workers = 2
[tls]
cert = "{cert}"
key = "{key}"
[upstreams.app]
discover = "localhost:8000"
health = {{ path = "/healthz" }}
[[routes]]
path_prefix = "/"
upstream = "app"
max_body = "16MiB"
[rate_limits.per_ip]
rate = "20r/s"
shared = true
[[rate_limit.rules]]
path_prefix = "/"
methods = ["GET"]
policy = "per_ip"
[rate_limit.shared]
{redis}
"#,
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    );
    let path = dir.join("full.toml");
    std::fs::write(&path, text).expect("write");
    let config = GatewayConfig::load(&path).expect("valid");
    let value = toml::Value::try_from(&config).expect("serializes");
    let mut keys = BTreeSet::new();
    flatten("", &value, &mut keys);
    keys
}

fn flatten(prefix: &str, value: &toml::Value, keys: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                // Map keys chosen by the operator are written NAME in the reference.
                let k = if matches!(prefix, "upstreams" | "rate_limits") {
                    "NAME"
                } else {
                    k.as_str()
                };
                let key = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, keys);
            }
        }
        toml::Value::Array(items) if items.first().is_some_and(toml::Value::is_table) => {
            for item in items {
                flatten(&format!("{prefix}[]"), item, keys);
            }
        }
        _ => {
            keys.insert(prefix.to_string());
        }
    }
}

fn keys_in_the_readme() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README");
    let section = readme
        .split("\n## Gateway configuration")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Gateway configuration section");
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_configuration_key_is_documented_and_every_documented_key_exists() {
    let types = keys_of_the_types();
    let readme = keys_in_the_readme();
    let undocumented: Vec<_> = types.difference(&readme).collect();
    let stale: Vec<_> = readme.difference(&types).collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from the README reference: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "README documents keys the code does not have: {stale:?}"
    );
    assert!(types.len() > 40, "the walk found too few keys: {types:?}");
}
