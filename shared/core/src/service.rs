//! The one entry of every service binary: a `main.rs` names the service and its run function,
//! and this does the rest the same way for all of them: `--help` and `--version` answered
//! before anything starts, settings loaded, telemetry, the shutdown signal, Postgres (and its
//! migrations, for the services that own them), the ops routes (`/healthz`, `/readyz`,
//! `/metrics`) on `http.listen`, and a clean stop of those routes after the run returns.
//!
//! ```ignore
//! fn main() -> anyhow::Result<()> {
//!     Service::new("edge", "Consumes pvefleet.edge (dns.*, proxy.*), emits dns.* and proxy.* events.")
//!         .main(|s| async move { pvefleet_edge::run(&s.settings, Some(s.bus_ready()), s.shutdown).await })
//! }
//! ```

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::Settings;
use crate::http::{Readiness, ReadyFlag};

/// What the service needs of Postgres before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    None,
    Connect,
    Migrate,
}

/// A service binary: its name, what it does, and what it needs started for it.
#[derive(Debug, Clone)]
pub struct Service {
    name: &'static str,
    about: &'static str,
    db: Db,
    ops_routes: bool,
    pve: bool,
}

/// What the entry started for the run function.
pub struct Started {
    /// The loaded settings.
    pub settings: Settings,
    /// A pool, when the service asked for one.
    pub db: Option<deadpool_postgres::Pool>,
    /// Readiness checks, served on `/readyz`.
    pub readiness: Readiness,
    /// Cancelled on SIGTERM or ctrl-c.
    pub shutdown: CancellationToken,
}

impl Started {
    /// The readiness flag of the bus consumer (`/readyz` says `bus` until it is set).
    pub fn bus_ready(&self) -> ReadyFlag {
        self.readiness.check("bus")
    }

    /// The pool the service asked for with `Service::db` or `Service::migrations`.
    pub fn pool(&self) -> anyhow::Result<deadpool_postgres::Pool> {
        self.db
            .clone()
            .ok_or_else(|| anyhow::anyhow!("this service was started without a database"))
    }
}

impl Service {
    /// A service called `pvefleet-{name}`; `about` is its `--help` line.
    pub fn new(name: &'static str, about: &'static str) -> Self {
        Self {
            name,
            about,
            db: Db::None,
            ops_routes: true,
            pve: false,
        }
    }

    /// Connects to Postgres before the run.
    pub fn db(mut self) -> Self {
        self.db = Db::Connect;
        self
    }

    /// Connects to Postgres and applies the migrations before the run (the services that own
    /// the schema: the saga coordinator and intake).
    pub fn migrations(mut self) -> Self {
        self.db = Db::Migrate;
        self
    }

    /// The service serves `http.listen` itself (intake, whose API carries the ops routes).
    /// The service needs the Proxmox API: without `pve.url` and its credentials it does not
    /// start its work, and waits, not ready (`/readyz` names what is missing), until stopped,
    /// rather than crash-looping against a PVE it was never told of.
    pub fn pve(mut self) -> Self {
        self.pve = true;
        self
    }

    pub fn serves_http(mut self) -> Self {
        self.ops_routes = false;
        self
    }

    /// Runs the service to its end on a multi-threaded runtime.
    pub fn main<F, Fut>(self, run: F) -> anyhow::Result<()>
    where
        F: FnOnce(Started) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        if let Some(arg) = std::env::args().nth(1) {
            return self.answer(&arg);
        }
        let result = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(self.start(run));
        // The spans of the last work, exported before the process ends.
        crate::telemetry::shutdown();
        result
    }

    /// A service takes no arguments: `--help` and `--version` are answered, anything else is
    /// a usage error (exit 2), and none of them starts the service.
    fn answer(&self, arg: &str) -> anyhow::Result<()> {
        match arg {
            "-h" | "--help" => {
                println!(
                    "pvefleet-{}: {}\n\nUsage: pvefleet-{}\n\nSettings come from the TOML file named by PVEFLEET_CONFIG (else ./pvefleet.toml),\nthen PVEFLEET_<SECTION>__<KEY> variables; `pvefleet config check` shows what is read.\nServes /healthz, /readyz and /metrics on http.listen. Stops cleanly on SIGTERM.",
                    self.name, self.about, self.name
                );
                Ok(())
            }
            "-V" | "--version" => {
                println!("pvefleet-{} {}", self.name, env!("CARGO_PKG_VERSION"));
                Ok(())
            }
            other => {
                // A usage error, as a CLI reports one: one line on stderr, exit status 2.
                eprintln!("pvefleet-{}: takes no arguments (got {other:?}); see --help", self.name);
                std::process::exit(2)
            }
        }
    }

    async fn start<F, Fut>(self, run: F) -> anyhow::Result<()>
    where
        F: FnOnce(Started) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let settings = Settings::load(None)?;
        crate::telemetry::init_named(&settings.telemetry, &format!("pvefleet-{}", self.name));
        let shutdown = crate::shutdown::on_signal();
        let db = match self.db {
            Db::None => None,
            Db::Connect => Some(crate::db::connect(&settings.db).await?),
            Db::Migrate => {
                let pool = crate::db::connect(&settings.db).await?;
                crate::db::migrate(&pool).await?;
                Some(pool)
            }
        };
        let readiness = Readiness::default();
        // The ops routes share the readiness checks the run adds later.
        let http = self.ops_routes.then(|| {
            let ops = crate::http::ops_router(readiness.clone());
            tokio::spawn(crate::http::serve(settings.http.listen, ops, shutdown.clone()))
        });
        if self.pve
            && let Some(missing) = pve_missing(&settings.pve)
        {
            let _flag = readiness.check(missing);
            tracing::error!(
                service = self.name,
                "Not starting: {missing}. Waiting, not ready, until stopped."
            );
            shutdown.cancelled().await;
            if let Some(http) = http {
                let _ = http.await;
            }
            return Ok(());
        }
        let result = run(Started {
            settings,
            db,
            readiness,
            shutdown: shutdown.clone(),
        })
        .await;
        shutdown.cancel();
        if let Some(http) = http {
            let _ = http.await;
        }
        result
    }
}

/// What the Proxmox settings lack, as a readiness reason; `None` when the API can be called.
pub fn pve_missing(pve: &crate::config::PveSettings) -> Option<&'static str> {
    let blank = |v: Option<&str>| v.is_none_or(|v| v.trim().is_empty());
    if pve.url.trim().is_empty() {
        return Some("pve: no pve.url (PVEFLEET_PVE__URL; PVE_URL in docker-compose.yml)");
    }
    let token = !blank(pve.token_id.as_deref()) && !blank(pve.token_secret.as_ref().map(|s| s.expose()));
    let password = !blank(pve.user.as_deref()) && !blank(pve.password.as_ref().map(|s| s.expose()));
    if !token && !password {
        return Some(
            "pve: no API token (pve.token_id and pve.token_secret: PVEFLEET_PVE__TOKEN_ID and PVEFLEET_PVE__TOKEN_SECRET_FILE; in docker-compose.yml PVE_TOKEN_ID and the file ./secrets/pve-token-secret)",
        );
    }
    None
}

#[cfg(test)]
mod pve_tests {
    use super::pve_missing;

    #[test]
    fn a_service_that_needs_pve_names_the_missing_url_or_token() {
        let mut pve = crate::config::PveSettings {
            url: String::new(),
            ..Default::default()
        };
        assert!(pve_missing(&pve).is_some_and(|m| m.contains("PVE_URL")));
        pve.url = "https://pve1.lan:8006".into();
        assert!(pve_missing(&pve).is_some_and(|m| m.contains("pve-token-secret")));
        pve.token_id = Some("fleet@pve!x".into());
        pve.token_secret = Some(crate::Secret::new(" \n"));
        assert!(pve_missing(&pve).is_some(), "an empty secret file is no secret");
        pve.token_secret = Some(crate::Secret::new("s"));
        assert_eq!(pve_missing(&pve), None);
    }
}
