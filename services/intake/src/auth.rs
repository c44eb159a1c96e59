//! Bearer tokens with scopes, stored as SHA-256 hashes (`api_tokens`). A token is an
//! operator's (no owner: it sees the whole fleet) or an owner's (it sees and changes only that
//! owner's sites, containers, operations and sagas). The scopes are `pvefleet_policy::scopes`.
//! A revoked or expired token is refused with 401 saying so.

use axum::http::{HeaderMap, StatusCode, header};
use pvefleet_core::audit::Actor;
use pvefleet_policy::scopes;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::problem::Problem;

/// The caller behind a valid token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token id.
    pub id: Uuid,
    /// The token's name.
    pub name: String,
    /// The owner it belongs to; none for an operator's token.
    pub owner: Option<String>,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// This request's id (`x-request-id`).
    pub request_id: String,
}

impl Caller {
    /// Whether the caller may see what belongs to `owner`: an operator sees all, an owner only
    /// their own.
    pub fn sees(&self, owner: &str) -> bool {
        self.owner.as_deref().is_none_or(|o| o == owner)
    }

    /// The caller in the audit trail.
    pub fn actor(&self) -> Actor {
        Actor::token(self.id, &self.name, self.owner.as_deref(), Some(&self.request_id))
    }

    /// 403 unless this is an operator's token.
    pub fn operator(&self, what: &str) -> Result<(), Problem> {
        match &self.owner {
            None => Ok(()),
            Some(owner) => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{what} is for operators' tokens; this token belongs to owner '{owner}'."),
            )),
        }
    }
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    crate::sha256_hex(token.as_bytes())
}

/// A token to make.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// Who it is for (a person, a system).
    pub name: String,
    /// The owner it acts for; none: an operator's token.
    pub owner: Option<String>,
    /// Its scopes (`pvefleet_policy::scopes`).
    pub scopes: Vec<String>,
    /// When it stops working.
    pub expires_in: Option<std::time::Duration>,
}

/// A token made: its id, and the token itself, shown once (only its hash is stored).
#[derive(Debug, Clone)]
pub struct Minted {
    /// The token's id (for `token list`, `revoke`, `rotate`).
    pub id: Uuid,
    /// The bearer token.
    pub token: String,
}

fn secret() -> String {
    format!("pvf_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn expires(d: Option<std::time::Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

/// Checks and stores a new token (its scopes known, no operator-only scope on an owner's
/// token, a valid owner name, a name), through `client`: the one insert every way of making a
/// token goes through.
async fn insert<C: tokio_postgres::GenericClient + Sync>(client: &C, t: &NewToken) -> anyhow::Result<Minted> {
    scopes::grantable(&t.scopes, t.owner.as_deref()).map_err(anyhow::Error::msg)?;
    if let Some(owner) = &t.owner {
        pvefleet_policy::site::owner(owner).map_err(|i| anyhow::anyhow!("--owner: {}", i.reason))?;
    }
    anyhow::ensure!(!t.name.trim().is_empty(), "a token needs a name");
    let id = Uuid::now_v7();
    let token = secret();
    client
        .execute(
            "INSERT INTO api_tokens (id, name, owner, hash, scopes, expires_at)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
            &[
                &id,
                &t.name,
                &t.owner,
                &hash_token(&token),
                &t.scopes,
                &expires(t.expires_in),
            ],
        )
        .await?;
    Ok(Minted { id, token })
}

/// Makes a token, audited as `token.create` by `actor` in the same transaction.
pub async fn mint(client: &mut tokio_postgres::Client, t: &NewToken, actor: &Actor) -> anyhow::Result<Minted> {
    let tx = client.transaction().await?;
    let minted = insert(&tx, t).await?;
    let mut entry = pvefleet_core::audit::Entry::new("token.create", format!("token/{}", minted.id)).detail(json!({
        "name": t.name, "scopes": t.scopes, "expires_in_s": expires(t.expires_in),
    }));
    entry.owner = t.owner.clone();
    pvefleet_core::audit::record(&tx, actor, &entry).await?;
    tx.commit().await?;
    Ok(minted)
}

/// Creates an operator's token named `name` with `scopes`; returns it (shown once).
pub async fn create_token(client: &tokio_postgres::Client, name: &str, scopes: &[String]) -> anyhow::Result<String> {
    create_owned_token(client, name, None, scopes).await
}

/// Creates a token for `owner` (none: an operator's), unaudited: for tests and bootstrap.
pub async fn create_owned_token(
    client: &tokio_postgres::Client,
    name: &str,
    owner: Option<&str>,
    scopes: &[String],
) -> anyhow::Result<String> {
    let t = NewToken {
        name: name.to_string(),
        owner: owner.map(str::to_string),
        scopes: scopes.to_vec(),
        expires_in: None,
    };
    Ok(insert(client, &t).await?.token)
}

/// Tokens (never their secrets), newest first: all, or `owner`'s; revoked ones with `all`.
pub async fn list_tokens(client: &tokio_postgres::Client, owner: Option<&str>, all: bool) -> anyhow::Result<Value> {
    let row = client
        .query_one(
            "SELECT coalesce(json_agg(t ORDER BY t.created_at DESC), '[]'::json) FROM (
                 SELECT id, name, owner, scopes, created_at, expires_at, revoked_at, revoked_reason, rotated_from,
                        CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                             WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired'
                             ELSE 'active' END AS status
                 FROM api_tokens
                 WHERE ($1::text IS NULL OR owner = $1) AND ($2 OR revoked_at IS NULL)) t",
            &[&owner, &all],
        )
        .await?;
    Ok(row.get(0))
}

/// Revokes token `id` with `reason`, audited; false when there is no such active token.
pub async fn revoke(
    client: &mut tokio_postgres::Client,
    id: Uuid,
    reason: &str,
    actor: &Actor,
) -> anyhow::Result<bool> {
    let tx = client.transaction().await?;
    let owner = tx
        .query_opt(
            "UPDATE api_tokens SET revoked_at = now(), revoked_reason = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING owner",
            &[&id, &reason],
        )
        .await?;
    let Some(row) = owner else {
        return Ok(false);
    };
    let mut entry =
        pvefleet_core::audit::Entry::new("token.revoke", format!("token/{id}")).detail(json!({ "reason": reason }));
    entry.owner = row.get(0);
    pvefleet_core::audit::record(&tx, actor, &entry).await?;
    tx.commit().await?;
    Ok(true)
}

/// Replaces token `id` by a new one with its name, owner, scopes and remaining lifetime; the
/// old one is revoked at once. Audited as `token.rotate`. None when `id` is not active.
pub async fn rotate(client: &mut tokio_postgres::Client, id: Uuid, actor: &Actor) -> anyhow::Result<Option<Minted>> {
    let tx = client.transaction().await?;
    let Some(old) = tx
        .query_opt(
            "SELECT name, owner, scopes, expires_at FROM api_tokens
             WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let new = Uuid::now_v7();
    let token = secret();
    let owner: Option<String> = old.get(1);
    tx.execute(
        "INSERT INTO api_tokens (id, name, owner, hash, scopes, expires_at, rotated_from)
         SELECT $1, name, owner, $2, scopes, expires_at, id FROM api_tokens WHERE id = $3",
        &[&new, &hash_token(&token), &id],
    )
    .await?;
    tx.execute(
        "UPDATE api_tokens SET revoked_at = now(), revoked_reason = $2 WHERE id = $1",
        &[&id, &format!("rotated to {new}")],
    )
    .await?;
    let mut entry = pvefleet_core::audit::Entry::new("token.rotate", format!("token/{id}"))
        .detail(json!({ "new_token_id": new, "name": old.get::<_, String>(0) }));
    entry.owner = owner;
    pvefleet_core::audit::record(&tx, actor, &entry).await?;
    tx.commit().await?;
    Ok(Some(Minted { id: new, token }))
}

fn unauthenticated(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
}

/// The caller, if the bearer token is valid (not revoked, not expired) and holds `scope` (or
/// `admin`).
pub(crate) async fn require(st: &crate::AppState, headers: &HeaderMap, scope: &str) -> Result<Caller, Problem> {
    let caller = authenticate(st, headers).await?;
    if !scopes::holds(&caller.scopes, scope) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("The token lacks the '{scope}' scope."),
        ));
    }
    Ok(caller)
}

/// The caller behind the bearer token, whatever its scopes, within its request rate.
pub(crate) async fn authenticate(st: &crate::AppState, headers: &HeaderMap) -> Result<Caller, Problem> {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Err(unauthenticated("Send a bearer token: Authorization: Bearer <token>."));
    };
    let client = st.pool.get().await.map_err(crate::db_problem)?;
    let row = client
        .query_opt(
            "SELECT id, name, owner, scopes, revoked_at::text, revoked_reason,
                    expires_at::text, (expires_at IS NOT NULL AND expires_at <= now())
             FROM api_tokens WHERE hash = $1",
            &[&hash_token(token)],
        )
        .await
        .map_err(crate::db_problem)?;
    let Some(row) = row else {
        return Err(unauthenticated("The token is not valid."));
    };
    if let Some(at) = row.get::<_, Option<String>>(4) {
        let why = row.get::<_, Option<String>>(5).unwrap_or_default();
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        return Err(unauthenticated(format!("The token was revoked at {at}{why}.")));
    }
    if row.get::<_, bool>(7) {
        let at = row.get::<_, Option<String>>(6).unwrap_or_default();
        return Err(unauthenticated(format!("The token expired at {at}.")));
    }
    let id: Uuid = row.get(0);
    if let Err(wait) = st.limits.take(id) {
        return Err(crate::fair::too_many(
            "This token is over its request rate (intake.rate_per_second); slow down.".into(),
            wait,
        ));
    }
    Ok(Caller {
        id,
        name: row.get(1),
        owner: row.get(2),
        scopes: row.get(3),
        request_id: crate::request_id(headers),
    })
}
