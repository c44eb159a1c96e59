//! Bearer tokens with scopes, stored as SHA-256 hashes (`api_tokens`).

use axum::http::{HeaderMap, StatusCode, header};
use uuid::Uuid;

use crate::problem::Problem;

/// The caller behind a valid token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token id.
    pub id: Uuid,
    /// The token's name (the default owner of what it creates).
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a token with `scopes`; returns it. It is shown once: only its hash is stored.
pub async fn create_token(client: &tokio_postgres::Client, name: &str, scopes: &[String]) -> anyhow::Result<String> {
    let token = format!("pvf_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    client
        .execute(
            "INSERT INTO api_tokens (id, name, hash, scopes) VALUES ($1, $2, $3, $4)",
            &[&Uuid::now_v7(), &name, &hash_token(&token), &scopes],
        )
        .await?;
    Ok(token)
}

/// The caller, if the bearer token is valid and holds `scope` (or `admin`).
pub async fn require(pool: &deadpool_postgres::Pool, headers: &HeaderMap, scope: &str) -> Result<Caller, Problem> {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Send a bearer token: Authorization: Bearer <token>.",
        ));
    };
    let client = pool.get().await.map_err(crate::db_problem)?;
    let row = client
        .query_opt(
            "SELECT id, name, scopes FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL",
            &[&hash_token(token)],
        )
        .await
        .map_err(crate::db_problem)?;
    let Some(row) = row else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "The token is not valid.",
        ));
    };
    let caller = Caller {
        id: row.get(0),
        name: row.get(1),
        scopes: row.get(2),
    };
    if !caller.scopes.iter().any(|s| s == scope || s == "admin") {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("The token lacks the '{scope}' scope."),
        ));
    }
    Ok(caller)
}
