//! The dev profile: where a running `pvefleet dev` can be reached. `pvefleet dev` writes it
//! (`~/.pvefleet/dev.toml`, or `$PVEFLEET_PROFILE`, mode 0600) and every command reads it when
//! no flag, variable or config file says otherwise, so `pvefleet sim ...`, `pvefleet pve check`
//! and `pvefleet site ...` work against it with no flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The variable naming another profile file.
pub const PROFILE_ENV: &str = "PVEFLEET_PROFILE";

/// The default Proxmox URL: a profile's pvesim applies only while `pve.url` is still this.
const DEFAULT_PVE_URL: &str = "https://127.0.0.1:8006";

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
/// and ignored: a command still runs on its flags.
pub fn load() -> Option<Profile> {
    let path = path()?;
    let text = std::fs::read_to_string(&path).ok()?;
    match toml::from_str(&text) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("warning: ignoring {}: {e}", path.display());
            None
        }
    }
}

/// Writes the profile, readable by its owner only.
pub fn save(profile: &Profile) -> anyhow::Result<PathBuf> {
    let path = path().ok_or_else(|| anyhow::anyhow!("no HOME and no {PROFILE_ENV}: nowhere to write the profile"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = format!(
        "# Written by `pvefleet dev`: where it runs, for the other pvefleet commands.\n{}",
        toml::to_string(profile)?
    );
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        open.mode(0o600);
    }
    let mut file = open.open(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(path)
}

/// Points `pve`, `bus` and `db` at the profile's, each unless a variable or the config file
/// set it (it still holds its default).
pub fn apply(settings: &mut pvefleet_core::Settings, profile: Option<&Profile>) {
    let Some(profile) = profile else { return };
    let defaults = pvefleet_core::Settings::default();
    let unset = |var: &str| std::env::var_os(var).is_none() && std::env::var_os(format!("{var}_FILE")).is_none();
    if let Some(url) = &profile.bus_url
        && unset("PVEFLEET_BUS__URL")
        && settings.bus.url.expose() == defaults.bus.url.expose()
    {
        settings.bus.url = pvefleet_core::Secret::new(url.clone());
    }
    if let Some(url) = &profile.db_url
        && unset("PVEFLEET_DB__URL")
        && settings.db.url.expose() == defaults.db.url.expose()
    {
        settings.db.url = pvefleet_core::Secret::new(url.clone());
    }
    let Some(sim) = profile.pvesim.as_ref() else {
        return;
    };
    if std::env::var_os("PVEFLEET_PVE__URL").is_some() || settings.pve.url != DEFAULT_PVE_URL {
        return;
    }
    settings.pve.url = sim.url.clone();
    if settings.pve.token_id.is_none() && settings.pve.user.is_none() {
        settings.pve.token_id = Some(sim.token_id.clone());
        settings.pve.token_secret = Some(pvefleet_core::Secret::new(sim.token_secret.clone()));
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
    fn the_profiles_pvesim_applies_only_over_the_default_url() {
        let profile = Profile {
            pvesim: Some(Pvesim {
                url: "http://127.0.0.1:8006".into(),
                token_id: "pvefleet@pve!dev".into(),
                token_secret: "s".into(),
            }),
            ..Profile::default()
        };
        let mut s = pvefleet_core::Settings::default();
        apply(&mut s, Some(&profile));
        assert_eq!(s.pve.url, "http://127.0.0.1:8006");
        assert_eq!(s.pve.token_id.as_deref(), Some("pvefleet@pve!dev"));
        let mut s = pvefleet_core::Settings::default();
        s.pve.url = "https://pve1.lan:8006".into();
        apply(&mut s, Some(&profile));
        assert_eq!(s.pve.url, "https://pve1.lan:8006", "a configured PVE wins");
        assert!(s.pve.token_id.is_none());
    }
}
