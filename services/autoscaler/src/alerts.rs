//! Resource alerts (pve-container-guardrails.md, resource monitoring): a container or node
//! crossing CPU 80 %, memory 85 % or disk 90 % raises an alert once; it clears once when the
//! usage is back below the threshold minus a hysteresis margin. Never an alert every tick.

use std::collections::HashSet;

pub use pvefleet_core::config::AlertThresholds as Thresholds;

/// What is being watched: `lxc/101` or `node/pve1`, and the resource.
pub type Key = (String, &'static str);

/// A change of an alert.
#[derive(Debug, Clone, PartialEq)]
pub enum Edge {
    /// Crossed: raised now.
    Raised {
        subject: String,
        resource: &'static str,
        value: f64,
        threshold: f64,
    },
    /// Back below: cleared now.
    Cleared {
        subject: String,
        resource: &'static str,
        value: f64,
        threshold: f64,
    },
}

/// Compares one reading with the alerts already raised; returns the edge, if any, and updates
/// `raised`.
pub fn check(
    t: &Thresholds,
    raised: &mut HashSet<Key>,
    subject: &str,
    resource: &'static str,
    value: f64,
) -> Option<Edge> {
    let threshold = match resource {
        "cpu" => t.cpu,
        "memory" => t.memory,
        _ => t.disk,
    };
    let key = (subject.to_string(), resource);
    let up = raised.contains(&key);
    if !up && value >= threshold {
        raised.insert(key);
        return Some(Edge::Raised {
            subject: subject.to_string(),
            resource,
            value,
            threshold,
        });
    }
    if up && value < threshold - t.hysteresis {
        raised.remove(&key);
        return Some(Edge::Cleared {
            subject: subject.to_string(),
            resource,
            value,
            threshold,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_is_raised_once_per_crossing_and_cleared_once_below_the_hysteresis() {
        let t = Thresholds::default();
        let mut raised = HashSet::new();
        let readings = [70.0, 81.0, 90.0, 85.0, 77.0, 74.9, 60.0, 82.0];
        let edges: Vec<Option<&str>> = readings
            .iter()
            .map(|v| {
                check(&t, &mut raised, "lxc/101", "cpu", *v).map(|e| match e {
                    Edge::Raised { .. } => "raised",
                    Edge::Cleared { .. } => "cleared",
                })
            })
            .collect();
        assert_eq!(
            edges,
            vec![
                None,
                Some("raised"),
                None,
                None,
                None,
                Some("cleared"),
                None,
                Some("raised")
            ],
            "77 is below 80 but inside the 5-point margin: still raised"
        );
    }

    #[test]
    fn each_subject_and_resource_has_its_own_alert() {
        let t = Thresholds::default();
        let mut raised = HashSet::new();
        assert!(check(&t, &mut raised, "lxc/101", "memory", 86.0).is_some());
        assert!(check(&t, &mut raised, "lxc/102", "memory", 86.0).is_some());
        assert!(
            check(&t, &mut raised, "lxc/101", "disk", 89.0).is_none(),
            "disk alerts at 90"
        );
        assert!(check(&t, &mut raised, "node/pve1", "disk", 95.0).is_some());
        assert_eq!(raised.len(), 3);
    }
}
