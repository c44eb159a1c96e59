//! The dev profile: where a running `pvefleet dev` can be reached. `pvefleet dev` writes it
//! (`~/.pvefleet/dev.toml`, or `$PVEFLEET_PROFILE`, mode 0600) and every command reads it when
//! no flag, variable or config file says otherwise, so `pvefleet sim ...`, `pvefleet pve check`
//! and `pvefleet site ...` work against it with no flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The variable naming another profile file.
pub const PROFILE_ENV: &str = "PVEFLEET_PROFILE";

/// What `pvefleet dev` tells the other commands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    /// The intake API.
    #[serde(default)]
    pub intake: Option<Intake>,
    /// The simulated Proxmox.
    #[serde(default)]
    pub pvesim: Option<Pvesim>,
    /// The installer's key for sites' credentials, kept so a restarted dev can read them.
    #[serde(default)]
    pub installer_secrets_key: Option<String>,
    /// The broker dev runs against (`amqp://...`).
    #[serde(default)]
    pub bus_url: Option<String>,
    /// The database dev runs against (`postgres://...`).
    #[serde(default)]
    pub db_url: Option<String>,
}

/// Intake's URL and token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intake {
    /// `http://127.0.0.1:8080`.
    pub url: String,
    /// An admin token.
    pub token: String,
}

/// pvesim's URL and API token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pvesim {
    /// `http://127.0.0.1:8006`.
    pub url: String,
    /// `USER@REALM!ID`.
    pub token_id: String,
    /// The token's secret.
    pub token_secret: String,
}

/// Where the profile is.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(PROFILE_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pvefleet").join("dev.toml"))
}

/// The profile, when there is one that reads. One that does not read is named on stderr
/// (without its content: it holds tokens) and ignored: a command still runs on its flags.
pub fn load() -> Option<Profile> {
    // Read once per command: the URL, the token and the settings all come from one reading
    // (and a bad profile is warned of once).
    static LOADED: std::sync::OnceLock<Option<Profile>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| match read() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("warning: ignoring the dev profile: {e}");
                None
            }
        })
        .clone()
}

/// The profile: `Ok(None)` when there is none, `Err` when there is one that does not read.
pub fn read() -> anyhow::Result<Option<Profile>> {
    let Some(path) = path() else { return Ok(None) };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    toml::from_str(&text).map(Some).map_err(|e| {
        // The error's message only: its snippet would quote the file, secrets and all.
        let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        match line {
            Some(l) => anyhow::anyhow!("{} is not a profile (line {l}): {}", path.display(), e.message()),
            None => anyhow::anyhow!("{} is not a profile: {}", path.display(), e.message()),
        }
    })
}

/// Writes the profile, readable by its owner only, whole or not at all (a temporary file
/// renamed over it, so a command reading it meanwhile never sees half of it).
pub fn save(profile: &Profile) -> anyhow::Result<PathBuf> {
    let path = path().ok_or_else(|| anyhow::anyhow!("no HOME and no {PROFILE_ENV}: nowhere to write the profile"))?;
    let dir = path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let text = format!(
        "# Written by `pvefleet dev`: where it runs, for the other pvefleet commands.\n{}",
        toml::to_string(profile)?
    );
    let tmp = dir.join(format!(".dev.toml.{}", std::process::id()));
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        open.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        let mut file = open.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("cannot write {}: {e}", path.display())
    })?;
    Ok(path)
}

/// Whether the user set `key` (`pve.url`) themselves: in its variable (or its `_FILE`), or in
/// the config file this command reads.
fn set_by_user(key: &str, file: Option<&toml::Table>) -> bool {
    let var = format!("PVEFLEET_{}", key.to_ascii_uppercase().replace('.', "__"));
    if std::env::var_os(&var).is_some() || std::env::var_os(format!("{var}_FILE")).is_some() {
        return true;
    }
    let mut at = file.map(|t| toml::Value::Table(t.clone()));
    for part in key.split('.') {
        at = at.and_then(|v| v.get(part).cloned());
    }
    at.is_some()
}

/// The config file a command reads (`--config`, else `$PVEFLEET_CONFIG`, else `./pvefleet.toml`),
/// as TOML, when there is one that parses (one that does not fails the command elsewhere).
pub fn config_file(explicit: Option<&std::path::Path>) -> Option<toml::Table> {
    let path = explicit
        .map(std::path::Path::to_path_buf)
        .or_else(|| std::env::var_os("PVEFLEET_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("pvefleet.toml"));
    toml::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Points `pve`, `bus` and `db` at the profile's, each unless the user set it (a variable or
/// the config file `file`).
pub fn apply(settings: &mut pvefleet_core::Settings, profile: Option<&Profile>, file: Option<&toml::Table>) {
    let Some(profile) = profile else { return };
    if let Some(url) = &profile.bus_url
        && !set_by_user("bus.url", file)
    {
        settings.bus.url = pvefleet_core::Secret::new(url.clone());
    }
    if let Some(url) = &profile.db_url
        && !set_by_user("db.url", file)
    {
        settings.db.url = pvefleet_core::Secret::new(url.clone());
    }
    let Some(sim) = profile.pvesim.as_ref() else {
        return;
    };
    if set_by_user("pve.url", file) {
        return;
    }
    settings.pve.url = sim.url.clone();
    let pve_auth = ["pve.token_id", "pve.token_secret", "pve.user", "pve.password"];
    if !pve_auth.iter().any(|k| set_by_user(k, file)) {
        settings.pve.token_id = Some(sim.token_id.clone());
        settings.pve.token_secret = Some(pvefleet_core::Secret::new(sim.token_secret.clone()));
        settings.pve.user = None;
        settings.pve.password = None;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_round_trips_through_toml() {
        let p = Profile {
            intake: Some(Intake {
                url: "http://127.0.0.1:8080".into(),
                token: "pf_x".into(),
            }),
            pvesim: Some(Pvesim {
                url: "http://127.0.0.1:8006".into(),
                token_id: "pvefleet@pve!dev".into(),
                token_secret: "s\"q".into(),
            }),
            installer_secrets_key: None,
            bus_url: None,
            db_url: None,
        };
        let back: Profile = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back.pvesim.unwrap().token_secret, "s\"q");
        assert_eq!(back.intake.unwrap().url, "http://127.0.0.1:8080");
    }

    #[test]
    fn the_profiles_pvesim_applies_only_where_the_user_set_no_pve() {
        let profile = Profile {
            pvesim: Some(Pvesim {
                url: "http://127.0.0.1:8006".into(),
                token_id: "pvefleet@pve!dev".into(),
                token_secret: "s".into(),
            }),
            ..Profile::default()
        };
        let mut s = pvefleet_core::Settings::default();
        apply(&mut s, Some(&profile), None);
        assert_eq!(s.pve.url, "http://127.0.0.1:8006");
        assert_eq!(s.pve.token_id.as_deref(), Some("pvefleet@pve!dev"));
        // A config file that names a PVE, even at the default URL, wins with its credentials.
        let file: toml::Table =
            toml::from_str("[pve]\nurl = \"https://127.0.0.1:8006\"\ntoken_id = \"root@pam!me\"\n").unwrap();
        let mut s = pvefleet_core::Settings::default();
        apply(&mut s, Some(&profile), Some(&file));
        assert_eq!(s.pve.url, "https://127.0.0.1:8006", "a configured PVE wins");
        assert!(s.pve.token_id.is_none(), "the profile's token goes nowhere else");
    }
}
