//! The inbox: dedupe by (consumer, message id), written in the handler's transaction so the
//! row exists exactly when the handler's effects do. The consumer runner claims a whole batch
//! at once (`CLAIM_MANY_SQL`) and gives a claim back when its message is undone.

use super::Sql;

/// Claims many messages at once; returns the ids that were new (not already recorded).
pub const CLAIM_MANY_SQL: &str = "INSERT INTO inbox (consumer, message_id) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING message_id";

/// Forgets a claim, so a message whose handling was undone is not taken for a duplicate later.
pub const UNCLAIM_SQL: &str = "DELETE FROM inbox WHERE consumer = $1 AND message_id = $2";

/// Deletes inbox rows older than `retention`; returns how many. Redeliveries older than that
/// are no longer deduplicated, so keep it well above the longest retry and replay horizon.
pub async fn prune<C: Sql + ?Sized>(client: &C, retention: std::time::Duration) -> Result<u64, tokio_postgres::Error> {
    client
        .exec(
            "DELETE FROM inbox WHERE received_at < now() - make_interval(secs => $1)",
            &[&retention.as_secs_f64()],
        )
        .await
}
