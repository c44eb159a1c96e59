//! The autoscaler (issue 7, in progress): resizes running containers' cores and memory from
//! measured load. Built: the pure decision (`decide`), the sample windows (`window`) and the
//! tick (`tick`: one `/cluster/resources` read, a Postgres advisory lock so one replica acts,
//! persisted cooldowns, digest-guarded config writes read back, `autoscale_actions`). Still to
//! come: per-tag and per-container policies, `container.scaled`, alerts, the watchdog, the CLI,
//! the lxc-autoscaler import, the service binary and its benchmark.

pub mod decide;
pub mod tick;
pub mod window;
