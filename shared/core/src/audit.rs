//! The audit trail (`audit_log`): one row per state-changing call or command, written in the
//! same transaction as the change, naming the actor (a token's id and name, or
//! `cli:$PVEFLEET_OPERATOR`), the owner it acted for, the action, the target, the outcome and
//! the request. Details never hold a secret: callers pass ids and names, not tokens or keys.

use serde_json::Value;
use uuid::Uuid;

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `token:<id> (<name>)` or `cli:<operator>`.
    pub name: String,
    /// The token, when a token did it.
    pub token_id: Option<Uuid>,
    /// The owner the actor belongs to (none: an operator).
    pub owner: Option<String>,
    /// The request id (intake's `x-request-id`), when it came over HTTP.
    pub request_id: Option<String>,
}

impl Actor {
    /// An operator at the CLI: `cli:$PVEFLEET_OPERATOR`, else `cli:$USER`, else `cli:operator`.
    pub fn cli() -> Self {
        let who = std::env::var("PVEFLEET_OPERATOR")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| std::env::var("USER").ok().filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(|| "operator".into());
        Self {
            name: format!("cli:{who}"),
            token_id: None,
            owner: None,
            request_id: None,
        }
    }

    /// A token, by its id and name, for `owner`, in request `request_id`.
    pub fn token(id: Uuid, name: &str, owner: Option<&str>, request_id: Option<&str>) -> Self {
        Self {
            name: format!("token:{id} ({name})"),
            token_id: Some(id),
            owner: owner.map(str::to_string),
            request_id: request_id.map(str::to_string),
        }
    }
}

impl From<&str> for Actor {
    /// An actor known only by name (a benchmark, a test).
    fn from(name: &str) -> Self {
        Self {
            name: name.to_string(),
            token_id: None,
            owner: None,
            request_id: None,
        }
    }
}

/// One change.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// What was done: `site.create`, `token.revoke`, `saga.resume`...
    pub action: &'a str,
    /// To what: `site/<id>`, `token/<id>`, `lxc/<vmid>`, `saga/<id>`...
    pub target: String,
    /// The owner of the target, when it has one (else the actor's).
    pub owner: Option<String>,
    /// `ok`, `accepted` (a command queued), `dry-run`...
    pub outcome: &'a str,
    /// What else an auditor needs: ids, counts, the changed keys. Never a secret.
    pub detail: Value,
}

impl<'a> Entry<'a> {
    /// `action` on `target`, done (`ok`), with no detail.
    pub fn new(action: &'a str, target: impl Into<String>) -> Self {
        Self {
            action,
            target: target.into(),
            owner: None,
            outcome: "ok",
            detail: Value::Null,
        }
    }

    /// For `owner`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// With outcome `outcome`.
    pub fn outcome(mut self, outcome: &'a str) -> Self {
        self.outcome = outcome;
        self
    }

    /// With `detail`.
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Writes `entry` by `actor` through `client` (a transaction, to be part of the change).
pub async fn record<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    actor: &Actor,
    entry: &Entry<'_>,
) -> Result<(), tokio_postgres::Error> {
    let owner = entry.owner.as_ref().or(actor.owner.as_ref());
    let detail = (!entry.detail.is_null()).then_some(&entry.detail);
    client
        .execute(
            "INSERT INTO audit_log (actor, token_id, owner, action, target, outcome, request_id, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &actor.name,
                &actor.token_id,
                &owner,
                &entry.action,
                &entry.target,
                &entry.outcome,
                &actor.request_id,
                &detail,
            ],
        )
        .await
        .map(drop)
}

/// Which rows `list` answers: each filter that is set must match (`action` and `target` match
/// as prefixes, so `site.` is every site action), newest first, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The actor, exactly (`cli:alice`, `token:<id> (<name>)`), or a token id.
    pub actor: Option<String>,
    /// The owner.
    pub owner: Option<String>,
    /// An action or its prefix.
    pub action: Option<String>,
    /// A target or its prefix.
    pub target: Option<String>,
    /// From this time (RFC 3339, or anything Postgres reads as a timestamp).
    pub since: Option<String>,
    /// Until this time.
    pub until: Option<String>,
}

/// The rows `f` selects, newest first, as JSON objects.
pub async fn list<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    f: &Filter,
    limit: i64,
) -> Result<Value, tokio_postgres::Error> {
    let token = f.actor.as_deref().and_then(|a| a.parse::<Uuid>().ok());
    let row = client
        .query_one(
            "SELECT coalesce(json_agg(a ORDER BY a.id DESC), '[]'::json) FROM (
                 SELECT id, at, actor, token_id, owner, action, target, outcome, request_id, detail FROM audit_log
                 WHERE ($1::text IS NULL OR actor = $1 OR token_id = $2)
                   AND ($3::text IS NULL OR owner = $3)
                   AND ($4::text IS NULL OR starts_with(action, $4))
                   AND ($5::text IS NULL OR starts_with(target, $5))
                   AND ($6::text IS NULL OR at >= $6::timestamptz)
                   AND ($7::text IS NULL OR at < $7::timestamptz)
                 ORDER BY id DESC LIMIT $8) a",
            &[
                &f.actor, &token, &f.owner, &f.action, &f.target, &f.since, &f.until, &limit,
            ],
        )
        .await?;
    Ok(row.get(0))
}
