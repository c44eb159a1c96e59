//! The rules a request meets wherever it enters the fleet. Intake calls them before it accepts
//! a request and the workers call them again when the command arrives, so a command published
//! straight to the bus meets exactly the rules an HTTP caller meets.
//!
//! - `site`: a site request (label, plan or sizes, template, app, owner, node, quota, subdomain);
//! - `names`: PVE's formats for names that end up in a request path (node, storage, VNet, zone);
//! - `net`: network interface requests, checked against the request and against PVE, and
//!   views of what PVE's configs say;
//! - `autoscale`: the autoscaling policy store;
//! - `scopes`: the token scopes intake checks and the CLI mints.

pub mod autoscale;
pub mod names;
pub mod net;
pub mod scopes;
pub mod site;

/// A request field at fault, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field at fault, as named in the request (`node`, `owner`, `index`, `vnet`...).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl Invalid {
    /// `field` is at fault because of `reason`.
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for Invalid {}
