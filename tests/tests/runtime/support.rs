//! Helpers shared by the runtime tests.

use std::path::PathBuf;
use std::time::Duration;

use pvefleet_contracts::Message;
use pvefleet_contracts::messages::ContainerCreate;
use pvefleet_core::Settings;
use pvefleet_core::bus::outgoing::Origin;
use pvefleet_core::bus::raw::Received;
use pvefleet_core::bus::runner::{WorkerDeps, WorkerSpec, run_worker};
use pvefleet_core::bus::{Outgoing, Publisher, Router};
use pvefleet_testkit::TestVhost;
use pvefleet_tests::{TEST_QUEUE, test_topology};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running in-process worker.
pub struct RunningWorker {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    /// Cancels and waits for the drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }
}

/// Starts a worker on the test queue.
pub fn start_worker(
    settings: &Settings,
    router: Router,
    db: Option<deadpool_postgres::Pool>,
    inbox: bool,
) -> RunningWorker {
    let topology = test_topology(&settings.bus);
    let publisher = Publisher::new(&settings.bus, "test-worker", Some(topology.clone()));
    let mut spec = WorkerSpec::from_settings("test-worker", TEST_QUEUE, settings);
    spec.inbox = inbox;
    let deps = WorkerDeps {
        bus: settings.bus.clone(),
        topology,
        publisher,
        db,
        ready: None,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_worker(deps, router, spec, shutdown.clone()));
    RunningWorker { shutdown, task }
}

/// A publisher that declares the test topology.
pub async fn publisher(settings: &Settings) -> anyhow::Result<Publisher> {
    let p = Publisher::new(&settings.bus, "test-publisher", Some(test_topology(&settings.bus)));
    p.connect().await?;
    Ok(p)
}

/// A `container.create` command with a marker hostname.
pub fn command(hostname: &str) -> Outgoing {
    let mut msg = ContainerCreate::example();
    msg.hostname = hostname.to_string();
    Outgoing::message(
        &msg,
        &Origin {
            correlation_id: Some(uuid::Uuid::now_v7()),
            ..Origin::default()
        },
    )
    .expect("example encodes")
}

/// The number of ready messages in a queue (passive declare on a throwaway channel).
pub async fn queue_len(vhost: &TestVhost, queue: &str) -> anyhow::Result<u32> {
    let probe = vhost.probe().await?;
    let n = probe.queue_len(queue).await?;
    probe.close();
    n.ok_or_else(|| anyhow::anyhow!("queue {queue} does not exist"))
}

/// A header as text.
pub fn header(d: &Received, name: &str) -> Option<String> {
    d.properties.header_str(name)
}

/// A config file for a child process, so it declares the same topology as the test.
pub fn child_config(settings: &Settings) -> anyhow::Result<PathBuf> {
    let tiers: Vec<String> = settings
        .bus
        .retry_tiers
        .iter()
        .map(|d| format!("\"{}ms\"", d.as_millis()))
        .collect();
    let text = format!(
        "[bus]\nurl = \"{}\"\ndelivery_limit = {}\nmax_attempts = {}\nretry_tiers = [{}]\n\n[db]\nurl = \"{}\"\n\n[telemetry]\nfilter = \"warn\"\n",
        settings.bus.url.expose(),
        settings.bus.delivery_limit,
        settings.bus.max_attempts,
        tiers.join(", "),
        settings.db.url.expose(),
    );
    let path = std::env::temp_dir().join(format!("pvefleet-child-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Runs the chaos worker binary with a config file.
pub fn chaos_worker(config: &PathBuf, args: &[&str]) -> anyhow::Result<std::process::Child> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_pvefleet-chaos-worker"))
        .args(args)
        .env_clear()
        .env("PVEFLEET_CONFIG", config)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?)
}

pub const LONG: Duration = Duration::from_secs(30);

/// A test's own vhost, its settings, and a publisher that has declared the test topology.
pub struct Rig {
    pub vhost: TestVhost,
    pub settings: Settings,
    pub publisher: Publisher,
}

/// The usual start of a runtime test.
pub async fn rig() -> anyhow::Result<Rig> {
    pvefleet_testkit::init_tracing();
    let vhost = TestVhost::new()?;
    let settings = pvefleet_testkit::settings(&vhost, None);
    let publisher = publisher(&settings).await?;
    Ok(Rig {
        vhost,
        settings,
        publisher,
    })
}

/// A fresh path for a child process to signal through.
pub fn marker_path() -> PathBuf {
    std::env::temp_dir().join(format!("pvefleet-marker-{}", uuid::Uuid::new_v4().simple()))
}
