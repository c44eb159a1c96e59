//! Intake settings (`[intake]`): fair use, so one tenant cannot starve the fleet.

use serde::{Deserialize, Serialize};

/// Limits per token and per owner; a request over one is answered 429 with `Retry-After`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeSettings {
    /// Requests a second one token may make, sustained (0: no limit). Counted per intake
    /// replica.
    pub rate_per_second: f64,
    /// Requests one token may make at once above that rate.
    pub rate_burst: u32,
    /// Sagas one owner may have in flight (accepted, running or compensating) before a new
    /// create or delete is refused (0: no limit).
    pub max_in_flight_per_owner: u32,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            rate_per_second: 50.0,
            rate_burst: 200,
            max_in_flight_per_owner: 50,
        }
    }
}
