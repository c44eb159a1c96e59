//! The checked-in contract in proto/ matches the Rust types, and every golden example validates.
//!
//! Regenerate after changing a message type: `PVEFLEET_UPDATE_PROTO=1 cargo test -p pvefleet-contracts`.
//! That rewrites the schemas and asyncapi.yaml and writes examples only where none exist yet:
//! golden examples are never overwritten, so a breaking change shows up as a failing example.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use pvefleet_contracts::{asyncapi, registry};
use serde_json::Value;

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

fn updating() -> bool {
    std::env::var("PVEFLEET_UPDATE_PROTO").is_ok_and(|v| v == "1")
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// Compares generated text with a checked-in file; returns a description of the drift, if any.
fn drift(path: &Path, expected: &str) -> Option<String> {
    match fs::read_to_string(path) {
        Ok(actual) if actual == expected => None,
        Ok(_) => Some(format!("{} differs from the Rust types", path.display())),
        Err(e) => Some(format!("{} cannot be read: {e}", path.display())),
    }
}

#[test]
fn schemas_and_asyncapi_match_the_rust_types() {
    let dir = proto_dir();
    let mut problems = Vec::new();
    let mut expected_files = BTreeSet::new();
    for m in registry() {
        let path = dir.join("schemas").join(m.schema_file());
        expected_files.insert(m.schema_file());
        let text = pretty(&m.schema());
        if updating() {
            fs::write(&path, &text).unwrap();
        } else if let Some(p) = drift(&path, &text) {
            problems.push(p);
        }
    }
    let asyncapi_path = dir.join("asyncapi.yaml");
    if updating() {
        fs::write(&asyncapi_path, asyncapi::yaml()).unwrap();
    } else if let Some(p) = drift(&asyncapi_path, &asyncapi::yaml()) {
        problems.push(p);
    }
    // A schema file with no Rust type behind it is drift too.
    for entry in fs::read_dir(dir.join("schemas")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !expected_files.contains(&name) {
            problems.push(format!("proto/schemas/{name} has no message type in shared/contracts"));
        }
    }
    assert!(
        problems.is_empty(),
        "proto/ has drifted from shared/contracts; run `PVEFLEET_UPDATE_PROTO=1 cargo test -p pvefleet-contracts`:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_drift_check_notices_a_changed_schema() {
    // The comparison itself must be able to fail: a schema with one field renamed differs.
    let m = &registry()[0];
    let mut changed = m.schema();
    changed["properties"]["renamed_field"] = serde_json::json!({"type": "string"});
    let path = proto_dir().join("schemas").join(m.schema_file());
    assert!(drift(&path, &pretty(&changed)).is_some());
}

#[test]
fn every_message_has_a_golden_example_that_validates_and_decodes() {
    let dir = proto_dir().join("examples");
    let mut problems = Vec::new();
    for m in registry() {
        let path = dir.join(m.schema_file());
        if updating() && !path.exists() {
            fs::write(&path, pretty(&m.example())).unwrap();
        }
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let example: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{}: not JSON: {e}", path.display()));
                continue;
            }
        };
        // Validate against the checked-in schema, which the drift test ties to the Rust type.
        // (While regenerating, the schema test may be rewriting that file concurrently.)
        let schema: Value = if updating() {
            m.schema()
        } else {
            let schema_text = fs::read_to_string(proto_dir().join("schemas").join(m.schema_file())).unwrap_or_default();
            serde_json::from_str(&schema_text).unwrap_or(Value::Null)
        };
        match jsonschema::validator_for(&schema) {
            Ok(v) => {
                for err in v.iter_errors(&example) {
                    problems.push(format!("{}: {} at {}", path.display(), err, err.instance_path()));
                }
            }
            Err(e) => problems.push(format!("schema for {} does not compile: {e}", m.name)),
        }
        match m.round_trip(&example) {
            Ok(back) if back == example => {}
            Ok(_) => problems.push(format!("{}: does not round-trip through the Rust type", path.display())),
            Err(e) => problems.push(format!("{}: does not decode: {e}", path.display())),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn schemas_reject_what_the_contract_forbids() {
    let m = pvefleet_contracts::registry::find("site.provision", 1).unwrap();
    let v = jsonschema::validator_for(&m.schema()).unwrap();
    let mut bad = m.example();
    bad["subdomain"] = "Bad_Name".into();
    assert!(!v.is_valid(&bad), "an invalid subdomain must fail the schema");
    let mut missing = m.example();
    missing.as_object_mut().unwrap().remove("site_id");
    assert!(!v.is_valid(&missing), "a missing site_id must fail the schema");
    assert!(v.is_valid(&m.example()));
}
