//! Imports point one way, down the path of a request: each of the
//! gateway's modules may use only the modules listed after it in
//! [`ORDER`], so there is no cycle and a reader can follow a request from
//! the top of the list to the bottom. A new module must be placed in the
//! list; a `crate::` path that points up fails here with both names.

use std::collections::BTreeMap;
use std::path::Path;

/// The modules of `gateway/src`, from the process's start to the leaves.
const ORDER: &[&str] = &[
    // The process: start-up, the admin listener and what it triggers.
    "startup",
    "admin",
    "reload",
    "replay",
    // Serving: workers accept, the server hands each connection the
    // generation in force, whose stack runs each request.
    "workers",
    "server",
    "generation",
    "connection",
    "stack",
    // The layers, in the order the stack applies them.
    "layers",
    "access_log",
    "request_check",
    "client_body",
    "rate_limit",
    "in_flight",
    "client_ip",
    "proxy_protocol",
    // Proxying: route and forward, to a replica's pooled connection.
    "health",
    "proxy",
    "upstream_client",
    "upstream_pool",
    "balancer",
    // What the path shares, below all of it.
    "service",
    "send_timeout",
    "body_watch",
    "errors",
    "activity",
    "log_limit",
    "ip_text",
    "metrics",
    "sharded",
    "memory",
    "worker_id",
    "config",
    "tls",
    "nets",
];

/// Each module's source, by its top-level name (a folder's files as one).
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, top: Option<&str>, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("src") {
            let path = entry.expect("entry").path();
            let name = path.file_stem().and_then(|s| s.to_str()).expect("name").to_string();
            let module = top.map_or(name.clone(), str::to_string);
            if path.is_dir() {
                walk(&path, Some(&module), out);
            } else if path.extension().is_some_and(|e| e == "rs") && !["lib", "main"].contains(&module.as_str()) {
                let text = std::fs::read_to_string(&path).expect("read");
                out.entry(module).or_default().push_str(&text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), None, &mut out);
    out
}

/// The modules `source` names through `crate::` paths, comments aside.
fn uses(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn every_module_is_placed_and_uses_only_modules_below_it() {
    let modules = modules();
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut wrong = Vec::new();
    for (module, source) in &modules {
        let Some(own) = rank(module) else {
            wrong.push(format!("{module} is not in ORDER"));
            continue;
        };
        for used in uses(source) {
            match rank(&used) {
                Some(r) if r > own => {}
                Some(_) if used == *module => {}
                Some(_) => wrong.push(format!("{module} uses {used}, which is above it")),
                None => wrong.push(format!("{module} uses {used}, which is not in ORDER")),
            }
        }
    }
    for listed in ORDER {
        if !modules.contains_key(*listed) {
            wrong.push(format!("{listed} is in ORDER but not in src"));
        }
    }
    wrong.dedup();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_use_pointing_up_is_found() {
    let source = "use crate::stack::StackState;\n// crate::server in a comment\nlet x = crate::nets::canonical(ip);";
    assert_eq!(uses(source), ["stack", "nets"]);
}
