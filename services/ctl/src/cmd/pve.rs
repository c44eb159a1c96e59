//! `pvefleet pve check`: is this Proxmox ready for the fleet? And `pvefleet pve config
//! parse|fmt`: the LXC config codec from the command line.

use std::path::Path;
use std::process::ExitCode;

use pvefleet_proxmox::{CodecError, ConfigFile, Section, SectionKind};
use serde_json::{Map, Value, json};

use crate::cli::{PveAction, PveConfigAction};

pub async fn run(settings: &pvefleet_core::Settings, action: PveAction) -> anyhow::Result<ExitCode> {
    match action {
        PveAction::Check { json } => super::pve_check::run(&settings.pve, json).await,
        PveAction::Config {
            action: PveConfigAction::Parse { file },
        } => parse(&file),
        PveAction::Config {
            action: PveConfigAction::Fmt { file, write },
        } => fmt(&file, write),
    }
}

fn load(file: &Path) -> anyhow::Result<Result<ConfigFile, CodecError>> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    Ok(ConfigFile::parse(&text))
}

fn parse(file: &Path) -> anyhow::Result<ExitCode> {
    let config = match load(file)? {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return Ok(ExitCode::from(2));
        }
    };
    let mut errors = Vec::new();
    let sections: Vec<Value> = config.sections.iter().map(|s| section_json(s, &mut errors)).collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "sections": sections, "errors": errors }))?
    );
    if errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for e in &errors {
            eprintln!("error: {}: {e}", file.display());
        }
        Ok(ExitCode::from(2))
    }
}

fn section_json(s: &Section, errors: &mut Vec<String>) -> Value {
    let mut out = Map::new();
    let (kind, name) = match &s.kind {
        SectionKind::Main => ("main", None),
        SectionKind::Pending => ("pending", None),
        SectionKind::Snapshot(n) => ("snapshot", Some(n.clone())),
    };
    out.insert("kind".into(), json!(kind));
    if let Some(n) = name {
        out.insert("name".into(), json!(n));
    }
    let description = s.description();
    if !description.is_empty() {
        out.insert("description".into(), json!(description));
    }
    let entries: Map<String, Value> = s.entries().map(|e| (e.key.clone(), json!(e.value))).collect();
    out.insert("entries".into(), Value::Object(entries));
    let mut nets = Map::new();
    for (i, n) in s.nets() {
        match n {
            Ok(n) => drop(nets.insert(format!("net{i}"), json!(n))),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut mps = Map::new();
    for (i, m) in s.mount_points() {
        match m {
            Ok(m) => drop(mps.insert(format!("mp{i}"), json!(m))),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !nets.is_empty() {
        out.insert("net".into(), Value::Object(nets));
    }
    if !mps.is_empty() {
        out.insert("mp".into(), Value::Object(mps));
    }
    match s.rootfs() {
        Some(Ok(r)) => drop(out.insert("rootfs".into(), json!(r))),
        Some(Err(e)) => errors.push(e.to_string()),
        None => {}
    }
    match s.features() {
        Some(Ok(f)) => drop(out.insert("features".into(), json!(f))),
        Some(Err(e)) => errors.push(e.to_string()),
        None => {}
    }
    Value::Object(out)
}

fn fmt(file: &Path, write: bool) -> anyhow::Result<ExitCode> {
    let config = match load(file)? {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return Ok(ExitCode::from(2));
        }
    };
    let canonical = config.write_canonical();
    if write {
        std::fs::write(file, canonical).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
    } else {
        print!("{canonical}");
    }
    Ok(ExitCode::SUCCESS)
}
