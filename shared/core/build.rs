//! Rebuilds the crate when a migration is added or changed: refinery embeds `migrations/` at
//! compile time, and cargo does not see a new file there on its own.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
