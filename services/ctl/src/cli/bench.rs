//! `pvefleet bench ...`.

use clap::Subcommand;

/// `pvefleet bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// One autoscaler tick over many containers in pvesim: API calls, time, window memory.
    Autoscaler {
        /// Containers, spread over 3 nodes.
        #[arg(long, default_value_t = 10_000)]
        containers: u32,
    },
    /// Batch replay of dead letters: stored rows republished to a queue, msgs/s.
    Dlq {
        /// Dead letters to store and replay.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
    },
    /// Provisioning sagas end to end against pvesim: sagas/s, latency at an offered rate, fleet
    /// vs raw broker messages/s, peak RSS.
    Sagas {
        /// Sagas in the throughput phase.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Sagas in flight in the throughput phase.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Offered sagas per second in the latency phase.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Seconds of the latency phase.
        #[arg(long, default_value_t = 10)]
        rate_secs: u64,
        /// Run saga, provisioner and ha as their own processes (binaries beside this one).
        #[arg(long)]
        separate: bool,
    },
    /// Raw lapin vs the runtime's publisher and consumer runner (inbox off and on).
    Bus {
        /// Messages per phase.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Confirm window and consumer prefetch.
        #[arg(long, default_value_t = 256)]
        window: u16,
        /// Rounds; each runs every phase once, interleaved, and the median of each is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// With the inbox on: database connections, each handling one batch transaction at a time.
        #[arg(long, default_value_t = 16)]
        inbox_connections: u16,
    },
}
