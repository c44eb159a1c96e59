//! The embedded rules cannot drift from the official schema: regenerating them from
//! `../shared/pve-api` must reproduce the committed file (skipped when ../shared is absent).

#![allow(clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn embedded_rules_match_the_official_schema_extracts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if !root.join("../shared/pve-api/subset.json").exists() {
        eprintln!("SKIPPED: ../shared/pve-api is not beside the project");
        return;
    }
    let out = Command::new("python3")
        .arg("scripts/gen-pve-rules.py")
        .arg("--check")
        .current_dir(&root)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
