//! What a database error means to whoever caused it: bad input the request should not have
//! carried, a conflict with what is stored, an outage of the database itself, or a bug. HTTP
//! answers 400/409/503/500 by it; a handler retries an outage without limit and never parks
//! for it, since the message is not at fault.

use tokio_postgres::error::SqlState;

/// The kind of a database error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A value the database cannot take: a NUL, bad encoding, too long, out of range.
    InvalidInput,
    /// A unique, foreign-key or check constraint refused the change.
    Conflict,
    /// A lock could not be had in time; someone else holds it.
    Contention,
    /// The database cannot be reached, is shutting down, or is out of resources.
    Outage,
    /// Anything else: a statement of ours is wrong.
    Bug,
}

/// A database error, classified, with Postgres's own code and message kept for the log.
#[derive(Debug, Clone)]
pub struct Fault {
    /// What it means.
    pub kind: FaultKind,
    /// The SQLSTATE, when the server answered.
    pub code: Option<String>,
    /// The server's message (or the client's, when there was no answer).
    pub message: String,
}

/// Classifies a tokio-postgres error by its SQLSTATE; an error without one (the connection
/// broke, or was never made) is an outage.
pub fn classify_pg(e: &tokio_postgres::Error) -> Fault {
    let Some(code) = e.code() else {
        return Fault {
            kind: FaultKind::Outage,
            code: None,
            message: e.to_string(),
        };
    };
    let class = &code.code()[..2];
    let kind = match class {
        // Data exceptions (22: NUL and encoding, too long, out of range, bad syntax of a value)
        // and program limits (54: an index row too large for a huge value).
        "22" | "54" => FaultKind::InvalidInput,
        "23" => FaultKind::Conflict,
        // Connection exceptions, insufficient resources, operator intervention (shutdown),
        // system errors.
        "08" | "53" | "57" | "58" => FaultKind::Outage,
        // Serialization failures and deadlocks are transient: an outage of sorts.
        "40" => FaultKind::Outage,
        _ if *code == SqlState::LOCK_NOT_AVAILABLE => FaultKind::Contention,
        _ => FaultKind::Bug,
    };
    Fault {
        kind,
        code: Some(code.code().to_string()),
        message: super::describe(e),
    }
}

/// Classifies the first database error found in an error's chain: a tokio-postgres error, or
/// a pool that could not give a connection (an outage). `None` when the chain holds neither.
pub fn classify(e: &(dyn std::error::Error + 'static)) -> Option<Fault> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
            return Some(classify_pg(pg));
        }
        if let Some(pool) = err.downcast_ref::<deadpool_postgres::PoolError>() {
            if let deadpool_postgres::PoolError::Backend(pg) = pool {
                return Some(classify_pg(pg));
            }
            return Some(Fault {
                kind: FaultKind::Outage,
                code: None,
                message: pool.to_string(),
            });
        }
        cur = err.source();
    }
    None
}

/// Classifies an `anyhow` error by its chain; see [`classify`].
pub fn classify_any(e: &anyhow::Error) -> Option<Fault> {
    e.chain().find_map(classify)
}

/// Whether an error is an outage of the database (retry without limit; never the message's fault).
pub fn is_outage(e: &anyhow::Error) -> bool {
    classify_any(e).is_some_and(|f| f.kind == FaultKind::Outage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_timeout_is_an_outage_and_plain_errors_are_not_database_errors() {
        let e = anyhow::Error::from(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Wait,
        ));
        assert!(is_outage(&e));
        assert!(classify_any(&anyhow::anyhow!("not a database error")).is_none());
    }
}
