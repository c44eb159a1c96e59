//! Loading settings: defaults, then the TOML file, then the environment (with `*_FILE`
//! secrets), and rendering them back as redacted TOML.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use super::{CONFIG_FILE_ENV, ENV_PREFIX, Settings};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, the environment or a value was invalid: each fault names the variable (or
    /// the file and key) that holds it, and for an unknown key the accepted keys nearest to it.
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// A `*_FILE` variable named a file that cannot be read.
    #[error("cannot read {var}={path}")]
    SecretFile {
        /// The variable.
        var: String,
        /// The path it named.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Settings {
    /// Loads settings from defaults, then the file (`path`, else `$PVEFLEET_CONFIG`, else
    /// `./pvefleet.toml` when present), then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(path, std::env::vars())
    }

    /// Like [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Settings live in sections (`PVEFLEET_<SECTION>__<KEY>`); the CLI's own variables
        // without a section (`PVEFLEET_TOKEN`, `PVEFLEET_OPERATOR`) are not settings.
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && (k == CONFIG_FILE_ENV || k.contains("__")))
            .collect();
        let file = path.map(Path::to_path_buf).or_else(|| {
            env.iter()
                .find(|(k, _)| k == CONFIG_FILE_ENV)
                .map(|(_, v)| PathBuf::from(v))
        });
        // Defaults come from the types' serde defaults, not from serializing Settings::default():
        // secrets serialize redacted, so a serialized default would lose them.
        let file_name = file.clone().unwrap_or_else(|| PathBuf::from("pvefleet.toml"));
        let mut fig = Figment::new();
        match file {
            Some(f) => fig = fig.merge(Toml::file_exact(f)),
            None => fig = fig.merge(Toml::file("pvefleet.toml")),
        }
        // `X_FILE` reads setting `x` from a file, unless `x_file` is itself a setting (a path
        // the service reads, such as `notifier.smtp.password_file`): then it is that setting.
        let indirect = |k: &str| k.ends_with("_FILE") && k != CONFIG_FILE_ENV && !names_setting(&env_key(k));
        let plain: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k != CONFIG_FILE_ENV && !indirect(k))
            .cloned()
            .collect();
        for (var, value) in plain {
            // Values parse like figment's own Env provider: numbers, booleans and arrays are typed.
            let parsed: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            fig = fig.merge(Serialized::global(&env_key(&var), parsed));
        }
        for (var, path) in env.iter().filter(|(k, _)| indirect(k)) {
            let content = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                var: var.clone(),
                path: PathBuf::from(path),
                source,
            })?;
            let key = env_key(var.trim_end_matches("_FILE"));
            fig = fig.merge(Serialized::global(&key, content.trim_end_matches(['\n', '\r'])));
        }
        fig.extract()
            .map_err(|e| ConfigError::Invalid(describe(e, &env, &file_name)))
    }

    /// The effective settings as TOML, with every secret redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml_string(self)
    }
}

/// Whether `key` (`notifier.smtp.password_file`) is a setting: a member of the defaults.
fn names_setting(key: &str) -> bool {
    let Ok(defaults) = serde_json::to_value(Settings::default()) else {
        return false;
    };
    key.split('.').try_fold(&defaults, |v, part| v.get(part)).is_some()
}

/// Each fault of `err` in the words of what the user wrote: the variable, or the file and key.
fn describe(err: figment::Error, env: &[(String, String)], file: &Path) -> Vec<String> {
    use figment::error::Kind;
    err.into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            let (what, nearest) = match &e.kind {
                Kind::UnknownField(field, accepted) => {
                    if path.last() == Some(field) {
                        path.pop();
                    }
                    let section = if path.is_empty() {
                        "the top level".to_string()
                    } else {
                        format!("[{}]", path.join("."))
                    };
                    path.push(field.clone());
                    (format!("unknown key `{field}` in {section}"), nearest(field, accepted))
                }
                Kind::UnknownVariant(value, accepted) => (format!("unknown value `{value}`"), nearest(value, accepted)),
                other => (other.to_string(), Vec::new()),
            };
            let key = path.join(".");
            // Which the user wrote it in: a variable (with or without _FILE) or the file.
            // A misspelt section (`PVEFLEET_BSU__URL`) faults at the section: the variable is
            // the one under it.
            let key_lc = key.to_ascii_lowercase();
            let var = env.iter().map(|(k, _)| k).find(|k| {
                let of = env_key(k.trim_end_matches("_FILE"));
                k.as_str() != CONFIG_FILE_ENV
                    && !key_lc.is_empty()
                    && (of == key_lc || of.starts_with(&format!("{key_lc}.")))
            });
            let origin = match var {
                Some(v) => v.clone(),
                None if key.is_empty() || matches!(e.kind, Kind::UnknownField(..)) => format!("{}", file.display()),
                None => format!("{}: key {key}", file.display()),
            };
            let mut line = format!("{origin}: {what}");
            if !nearest.is_empty() {
                // As the variable the user meant: theirs, with the faulty part replaced.
                let at = path.len().saturating_sub(1);
                let shown: Vec<String> = nearest
                    .iter()
                    .map(|n| match var {
                        Some(v) if matches!(e.kind, Kind::UnknownField(..)) => {
                            let mut parts: Vec<String> = env_key(v.trim_end_matches("_FILE"))
                                .split('.')
                                .map(str::to_string)
                                .collect();
                            if let Some(p) = parts.get_mut(at) {
                                *p = n.to_string();
                            }
                            format!("{ENV_PREFIX}{}", parts.join("__").to_ascii_uppercase())
                        }
                        _ => n.to_string(),
                    })
                    .collect();
                line.push_str(&format!("; did you mean {}?", shown.join(", ")));
            }
            line
        })
        .collect()
}

/// The accepted names nearest to `wrote`, by edit distance (at most three, within half its
/// length); every accepted name when none is near and there are few.
fn nearest(wrote: &str, accepted: &[&'static str]) -> Vec<&'static str> {
    let wrote = wrote.to_ascii_lowercase();
    let mut scored: Vec<(usize, &'static str)> = accepted.iter().map(|a| (distance(&wrote, a), *a)).collect();
    scored.sort();
    let near: Vec<&'static str> = scored
        .iter()
        .filter(|(d, a)| *d <= (wrote.len().max(a.len()) / 2).max(1) || a.contains(&wrote) || wrote.contains(*a))
        .take(3)
        .map(|(_, a)| *a)
        .collect();
    if near.is_empty() && accepted.len() <= 6 {
        return accepted.to_vec();
    }
    near
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment):
/// `bsu` is one from `bus`.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn env_key(var: &str) -> String {
    var.trim_start_matches(ENV_PREFIX)
        .to_ascii_lowercase()
        .replace("__", ".")
}

fn toml_string(s: &Settings) -> String {
    match serde_json::to_value(s) {
        Ok(v) => {
            let mut out = String::new();
            write_toml(&v, "", &mut out);
            out
        }
        Err(e) => format!("# cannot render settings: {e}\n"),
    }
}

fn write_toml(v: &serde_json::Value, prefix: &str, out: &mut String) {
    let Some(map) = v.as_object() else { return };
    for (k, val) in map.iter().filter(|(_, v)| !v.is_object()) {
        if !val.is_null() {
            out.push_str(&format!("{k} = {val}\n"));
        }
    }
    for (k, val) in map.iter().filter(|(_, v)| v.is_object()) {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        out.push_str(&format!("\n[{name}]\n"));
        write_toml(val, &name, out);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_load_without_file_or_environment() {
        let s = Settings::load_from(Some(Path::new("/nonexistent/none.toml")), env(&[])).err();
        assert!(s.is_some(), "an explicit missing file is an error");
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.bus.confirm_window, 256);
        assert_eq!(
            s.bus.url.expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "default secrets survive loading"
        );
    }

    #[test]
    fn variables_without_a_section_are_the_clis_own_not_settings() {
        let s = Settings::load_from(
            None,
            env(&[
                ("PVEFLEET_TOKEN", "t"),
                ("PVEFLEET_OPERATOR", "me"),
                ("PVEFLEET_WORKER__CONCURRENCY", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.concurrency, 3);
    }

    #[test]
    fn the_example_config_loads_with_every_section() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pvefleet.example.toml");
        let s = Settings::load_from(Some(&example), env(&[])).unwrap();
        assert_eq!(s.saga.dns_provider, "powerdns");
        assert_eq!(s.saga.timeout_of("app.install"), Duration::from_secs(45 * 60));
        assert_eq!(s.saga.timeout_of("container.create"), Duration::from_secs(15 * 60));
        assert_eq!(s.provisioner.preferred_nodes, vec!["pve1", "pve2"]);
        assert_eq!(s.edge.caddy_server, "edge");
        let plans: Vec<&String> = s.saga.plans.keys().collect();
        assert_eq!(plans, ["medium", "small"], "the file's plans replace the defaults");
        assert_eq!(s.saga.plans["medium"].backup_policy.as_deref(), Some("daily"));
        assert_eq!(s.backup.final_retention, Duration::from_secs(30 * 86_400));
        assert!(s.saga.final_backup);
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("pvefleet-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[bus]\nconfirm_window = 64\ndelivery_limit = 3\n[worker]\ndrain_timeout = \"2s\"\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some(&file),
            env(&[
                ("PVEFLEET_BUS__CONFIRM_WINDOW", "32"),
                ("PVEFLEET_WORKER__CONCURRENCY", "4"),
            ]),
        )
        .unwrap();
        assert_eq!(s.bus.confirm_window, 32);
        assert_eq!(s.bus.delivery_limit, 3);
        assert_eq!(s.worker.concurrency, 4);
        assert_eq!(s.worker.drain_timeout, Duration::from_secs(2));
    }

    #[test]
    fn unknown_keys_are_rejected_from_file_and_environment() {
        let dir = std::env::temp_dir().join(format!("pvefleet-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[bus]\nconfirm_windw = 64\n").unwrap();
        let err = Settings::load_from(Some(&file), env(&[])).unwrap_err();
        let chain = format!("{:?}", err);
        assert!(chain.contains("confirm_windw"), "{chain}");
        let err = Settings::load_from(None, env(&[("PVEFLEET_BUS__NOPE", "1")])).unwrap_err();
        assert!(format!("{err:?}").contains("nope"));
    }

    #[test]
    fn a_misspelt_variable_is_named_with_the_nearest_accepted_keys() {
        let err = Settings::load_from(None, env(&[("PVEFLEET_BUS__URLL", "x")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: PVEFLEET_BUS__URLL: unknown key `urll` in [bus]; did you mean PVEFLEET_BUS__URL?"
        );
        let err = Settings::load_from(None, env(&[("PVEFLEET_BUS__CONFIRM_WINDOW", "many")])).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("invalid configuration: PVEFLEET_BUS__CONFIRM_WINDOW: "),
            "{shown}"
        );
        assert!(!shown.contains(".rs:"), "no source location: {shown}");
        let err = Settings::load_from(None, env(&[("PVEFLEET_BSU__URL", "x")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: PVEFLEET_BSU__URL: unknown key `bsu` in the top level; did you mean PVEFLEET_BUS__URL?"
        );
    }

    #[test]
    fn a_misspelt_key_in_the_file_is_named_with_the_file_and_nearest_keys() {
        let dir = std::env::temp_dir().join(format!("pvefleet-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[installer]\ntransprot = \"ssh\"\n[bsu]\nurl = \"x\"\n").unwrap();
        let shown = Settings::load_from(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(
            shown.contains(&format!(
                "{}: unknown key `transprot` in [installer]; did you mean transport?",
                file.display()
            )) || shown.contains(&format!(
                "{}: unknown key `bsu` in the top level; did you mean bus?",
                file.display()
            )),
            "{shown}"
        );
    }

    #[test]
    fn file_variants_supply_secrets_and_they_never_print() {
        let dir = std::env::temp_dir().join(format!("pvefleet-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("db");
        std::fs::write(&secret, "postgres://app:s3cr3t@db:5432/pvefleet\n").unwrap();
        let s = Settings::load_from(None, env(&[("PVEFLEET_DB__URL_FILE", secret.to_str().unwrap())])).unwrap();
        assert_eq!(s.db.url.expose(), "postgres://app:s3cr3t@db:5432/pvefleet");
        let shown = s.to_redacted_toml();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("[db]"), "{shown}");
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_variable_naming_a_setting_that_ends_in_file_is_that_setting_not_a_file_to_read() {
        // `notifier.smtp.password_file` is a path the notifier reads itself; the variable that
        // sets it is not read as a file here (the file need not exist where the CLI runs).
        let s = Settings::load_from(
            None,
            env(&[
                ("PVEFLEET_NOTIFIER__SMTP__PASSWORD_FILE", "/run/secrets/smtp_password"),
                (
                    "PVEFLEET_NOTIFIER__OWNER_WEBHOOK_KEY_FILE",
                    "/run/secrets/owner_webhook_key",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.notifier.smtp.password_file.as_deref(),
            Some(std::path::Path::new("/run/secrets/smtp_password"))
        );
        assert_eq!(
            s.notifier.owner_webhook_key_file.as_deref(),
            Some(std::path::Path::new("/run/secrets/owner_webhook_key"))
        );
        // Any other `_FILE` still reads its setting from the file, naming it when it cannot.
        let err = Settings::load_from(None, env(&[("PVEFLEET_PVE__TOKEN_SECRET_FILE", "/nonexistent/secret")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PVEFLEET_PVE__TOKEN_SECRET_FILE"), "{err}");
    }
}
