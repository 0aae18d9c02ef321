//! Architecture invariants checked on the source text (as rust-analyzer's tidy tests do).

use std::fs;
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).expect("readable source file");
            // Code only: comments may name what the code must not use.
            let code: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            out.push((path.display().to_string(), code.join("\n")));
        }
    }
}

/// The engine is pure: no async runtime, no database, no RPC, no I/O, no locks, no clock.
/// (Shared immutable values, `std::sync::Arc`, are no lock: allowed, imported on their own.)
#[test]
fn the_engine_depends_on_nothing_with_side_effects() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine"),
        &mut files,
    );
    assert!(files.len() >= 5, "found the engine's files");
    let banned = [
        "tokio",
        "sqlx",
        "tonic",
        "prost",
        "tracing",
        "std::fs",
        "std::io",
        "std::net::Tcp",
        "std::net::Udp",
        "std::sync::Mutex",
        "std::sync::RwLock",
        "std::sync::Condvar",
        "std::sync::Once",
        "std::sync::mpsc",
        "std::sync::atomic",
        "std::sync::{",
        "std::time",
        "std::thread",
        "std::env",
        "crate::store",
        "crate::ipam",
        "crate::api",
        "async fn",
        ".await",
    ];
    for (path, text) in &files {
        for word in banned {
            assert!(
                !text.contains(word),
                "{path} mentions `{word}`: the engine must stay pure (ARCHITECTURE.md)"
            );
        }
    }
}

fn code_under(dir: &str) -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    assert!(!files.is_empty(), "found {dir}");
    files
}

fn assert_absent(files: &[(String, String)], banned: &[&str], why: &str) {
    for (path, text) in files {
        for word in banned {
            assert!(!text.contains(word), "{path} mentions `{word}`: {why}");
        }
    }
}

/// Only the store knows SQL; the layers below the API know nothing of tonic or prost.
#[test]
fn layers_keep_to_their_dependencies() {
    let mut all = code_under("src");
    all.retain(|(p, _)| !p.contains("/store/"));
    assert_absent(
        &all,
        &["sqlx", "SELECT ", "INSERT "],
        "only src/store knows SQL",
    );
    let mut below_api = code_under("src/store");
    below_api.extend(code_under("src/ipam"));
    assert_absent(
        &below_api,
        &["tonic", "prost", "crate::api", "crate::proto"],
        "stores and drivers know nothing of the API",
    );
    // proto.rs converts between the wire and the domain; the API uses it, never the reverse.
    let proto = code_under("src")
        .into_iter()
        .filter(|(p, _)| p.ends_with("src/proto.rs"))
        .collect::<Vec<_>>();
    assert_eq!(proto.len(), 1, "found src/proto.rs");
    assert_absent(
        &proto,
        &["crate::api", "super::api"],
        "proto.rs sits below the API (ARCHITECTURE.md)",
    );
}
