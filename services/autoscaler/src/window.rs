//! Sample windows: the last readings of one container, each counted once.
//!
//! `/cluster/resources` answers from PVE's status broadcast, refreshed about every 10 s
//! (pve-behaviour.md), so a tick faster than that reads the same sample again. Each reading is
//! keyed by the sample it came from; a reading with the key of the newest one is the same
//! sample, and is not counted twice.

use std::collections::VecDeque;

/// One reading of a container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Which PVE sample this is (its time, or a fingerprint of its counters when PVE gives no
    /// time): equal keys are the same sample.
    pub key: u64,
    /// CPU busy, in cores (PVE's `cpu` fraction times `maxcpu`).
    pub cpu_cores: f64,
    /// Memory used, MiB.
    pub mem_mb: f64,
}

/// The newest samples of one container, at most `capacity`.
#[derive(Debug, Clone)]
pub struct Window {
    samples: VecDeque<Sample>,
    capacity: usize,
}

/// Averages over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Averages {
    /// Mean CPU busy, cores.
    pub cpu_cores: f64,
    /// Mean memory used, MiB.
    pub mem_mb: f64,
    /// The highest memory used in the window, MiB: a scale-down never goes below it.
    pub mem_peak_mb: f64,
}

impl Window {
    /// A window holding `capacity` samples (the evaluation periods).
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
        }
    }

    /// Adds a reading; returns false when it is the sample already held last.
    pub fn push(&mut self, s: Sample) -> bool {
        if self.samples.back().is_some_and(|last| last.key == s.key) {
            return false;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
        true
    }

    /// Changes how many samples are kept (a policy changed).
    pub fn resize(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.samples.len() > self.capacity {
            self.samples.pop_front();
        }
    }

    /// How many distinct samples are held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The averages, once the window is full; `None` before (no decision on too little data).
    pub fn averages(&self) -> Option<Averages> {
        if self.samples.len() < self.capacity {
            return None;
        }
        let n = self.samples.len() as f64;
        Some(Averages {
            cpu_cores: self.samples.iter().map(|s| s.cpu_cores).sum::<f64>() / n,
            mem_mb: self.samples.iter().map(|s| s.mem_mb).sum::<f64>() / n,
            mem_peak_mb: self.samples.iter().map(|s| s.mem_mb).fold(0.0, f64::max),
        })
    }

    /// The bytes one window of `capacity` samples holds, for the memory budget.
    pub fn bytes(capacity: usize) -> usize {
        std::mem::size_of::<Self>() + capacity * std::mem::size_of::<Sample>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(key: u64, cpu: f64, mem: f64) -> Sample {
        Sample {
            key,
            cpu_cores: cpu,
            mem_mb: mem,
        }
    }

    #[test]
    fn a_repeated_sample_is_counted_once() {
        let mut w = Window::new(3);
        assert!(w.push(s(10, 1.0, 100.0)));
        assert!(!w.push(s(10, 1.0, 100.0)), "the same sample read again");
        assert!(!w.push(s(10, 1.0, 100.0)));
        assert_eq!(w.len(), 1);
        assert_eq!(w.averages(), None, "three periods need three samples");
        w.push(s(20, 2.0, 200.0));
        w.push(s(30, 3.0, 600.0));
        let a = w.averages().unwrap_or_else(|| panic!("full"));
        assert!((a.cpu_cores - 2.0).abs() < 1e-9);
        assert!((a.mem_mb - 300.0).abs() < 1e-9);
        assert!((a.mem_peak_mb - 600.0).abs() < 1e-9);
    }

    #[test]
    fn the_window_slides_and_keeps_the_newest() {
        let mut w = Window::new(2);
        for (k, cpu) in [(1, 1.0), (2, 2.0), (3, 4.0)] {
            w.push(s(k, cpu, 0.0));
        }
        assert_eq!(w.len(), 2);
        let a = w.averages().unwrap_or_else(|| panic!("full"));
        assert!((a.cpu_cores - 3.0).abs() < 1e-9);
        w.resize(1);
        assert!((w.averages().unwrap_or_else(|| panic!("full")).cpu_cores - 4.0).abs() < 1e-9);
    }
}
