//! Connections cannot exhaust the gateway's memory: with the deployed
//! configuration, `max_connections` idle connections at the cost the
//! benchmark measured (`bench/connections.sh`, which writes
//! `bench/connections.measured.toml`), plus the process's baseline, fit
//! the Swarm stack's memory limit with a quarter to spare for requests in
//! flight. Change a default, the stack's limit or the code's footprint, and
//! this says whether the arithmetic still holds.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `512M`, `1G`, `1536M` as bytes.
fn bytes(size: &str) -> u64 {
    let size = size.trim();
    let (number, unit) = size.split_at(size.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(size.len()));
    let number: u64 = number.parse().expect("a size");
    number
        * match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" => 1 << 10,
            "M" | "MB" => 1 << 20,
            "G" | "GB" => 1 << 30,
            other => panic!("unknown unit {other:?}"),
        }
}

#[test]
fn the_deployed_connection_cap_times_the_measured_idle_cost_fits_the_stacks_memory_limit() {
    let measured: toml::Table = std::fs::read_to_string(root().join("bench/connections.measured.toml"))
        .expect("bench/connections.measured.toml (run bench/connections.sh)")
        .parse()
        .expect("toml");
    let figure = |key: &str| measured[key].as_integer().expect(key) as u64;
    let per_connection = figure("idle_tls_http1_bytes").max(figure("idle_tls_http2_bytes"));
    let baseline = figure("baseline_bytes");

    let stack: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("swarm-stack.yml")).expect("stack")).expect("yaml");
    let limit = bytes(
        stack["services"]["gateway"]["deploy"]["resources"]["limits"]["memory"]
            .as_str()
            .expect("the gateway's memory limit"),
    );
    let deployed: toml::Table = std::fs::read_to_string(root().join("gateway.example.toml"))
        .expect("config")
        .parse()
        .expect("toml");
    let max_connections = deployed["limits"]["max_connections"]
        .as_integer()
        .expect("max_connections") as u64;
    let default = gateway::config::GatewayConfig::default().limits.max_connections as u64;
    assert_eq!(max_connections, default, "the deployed cap is the default");

    let needed = max_connections * per_connection + baseline;
    let budget = limit / 4 * 3;
    assert!(
        needed <= budget,
        "{max_connections} connections x {per_connection} B + {baseline} B baseline = {} MiB, \
         over three quarters of the {} MiB limit",
        needed >> 20,
        limit >> 20
    );
}

#[test]
fn sizes_are_read_as_docker_writes_them() {
    assert_eq!(bytes("512M"), 512 << 20);
    assert_eq!(bytes("1G"), 1 << 30);
    assert_eq!(bytes("64M"), 64 << 20);
}
