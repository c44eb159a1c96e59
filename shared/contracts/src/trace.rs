//! W3C trace context (`traceparent`), carried in AMQP headers so one trace spans the fleet.

use std::fmt;

use uuid::Uuid;

/// A parsed `traceparent`: version 00, a 16-byte trace id, an 8-byte parent span id and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace this work belongs to.
    pub trace_id: u128,
    /// The span that caused this work.
    pub span_id: u64,
    /// The `sampled` flag.
    pub sampled: bool,
}

impl TraceContext {
    /// Starts a new trace.
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero128(),
            span_id: nonzero64(),
            sampled: true,
        }
    }

    /// A child context: the same trace, a new span id.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: nonzero64(),
            sampled: self.sampled,
        }
    }

    /// Parses a `traceparent` header value. Returns `None` for anything malformed, as the W3C
    /// spec says to restart the trace rather than fail.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 || !trace.bytes().all(is_lower_hex) || !span.bytes().all(is_lower_hex) {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn nonzero128() -> u128 {
    loop {
        let v = Uuid::new_v4().as_u128();
        if v != 0 {
            return v;
        }
    }
}

fn nonzero64() -> u64 {
    loop {
        let v = Uuid::new_v4().as_u64_pair().0;
        if v != 0 {
            return v;
        }
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let t = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&t.to_string()), Some(t));
    }

    #[test]
    fn the_w3c_example_parses() {
        let t = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id, 0x00f0_67aa_0ba9_02b7);
        assert!(t.sampled);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let t = TraceContext::new_root();
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
    }
}
