//! Loading settings: defaults, then the TOML file, then the environment (with `*_FILE`
//! secrets), and rendering them back as redacted TOML.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use super::{CONFIG_FILE_ENV, ENV_PREFIX, Settings};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, the environment or a value was invalid.
    #[error("invalid configuration")]
    Invalid(#[source] Box<figment::Error>),
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
        let mut fig = Figment::new();
        match file {
            Some(f) => fig = fig.merge(Toml::file_exact(f)),
            None => fig = fig.merge(Toml::file("pvefleet.toml")),
        }
        let plain: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k != CONFIG_FILE_ENV && !k.ends_with("_FILE"))
            .cloned()
            .collect();
        for (var, value) in plain {
            // Values parse like figment's own Env provider: numbers, booleans and arrays are typed.
            let parsed: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            fig = fig.merge(Serialized::global(&env_key(&var), parsed));
        }
        for (var, path) in env.iter().filter(|(k, _)| k.ends_with("_FILE") && k != CONFIG_FILE_ENV) {
            let content = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                var: var.clone(),
                path: PathBuf::from(path),
                source,
            })?;
            let key = env_key(var.trim_end_matches("_FILE"));
            fig = fig.merge(Serialized::global(&key, content.trim_end_matches(['\n', '\r'])));
        }
        fig.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))
    }

    /// The effective settings as TOML, with every secret redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml_string(self)
    }
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
}
