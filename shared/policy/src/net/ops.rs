//! Operations in Postgres (`net_operations`): created `pending` by intake (or at first sight
//! of a command published directly), `running` while a worker has it, and ended
//! `succeeded`, `pending_reboot` or `failed`. The chosen index and `netN` value are kept
//! before the config write, so a redelivered command finds what it already did.

use serde_json::{Value, json};
use uuid::Uuid;

/// An operation as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// Its id.
    pub id: Uuid,
    /// The command, such as `net.attach`.
    pub kind: String,
    /// The container.
    pub vmid: Option<u32>,
    /// The VNet.
    pub vnet: Option<String>,
    /// The container's node.
    pub node: Option<String>,
    /// `pending`, `running`, `succeeded`, `failed` or `pending_reboot`; `parked` while its
    /// command waits in the dead letters.
    pub status: String,
    /// The `netN` index.
    pub net_index: Option<u8>,
    /// The `netN` value written.
    pub line: Option<String>,
    /// Keys PVE left pending until a restart.
    pub pending_keys: Vec<String>,
    /// Nodes where an SDN apply failed.
    pub failed_nodes: Vec<String>,
    /// Why it failed.
    pub error: Option<Value>,
    /// What the kind adds.
    pub result: Option<Value>,
    /// The request.
    pub request: Value,
    /// Who asked (a token's name).
    pub requested_by: Option<String>,
    /// When it was created, updated and ended (RFC 3339).
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// The end.
    pub finished_at: Option<String>,
}

/// Whether a status is an end.
pub fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "pending_reboot")
}

const COLUMNS: &str = "id, kind, vmid, vnet, node, status, net_index, line, pending_keys, failed_nodes, error, result, request, requested_by,
    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
    to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

fn from_row(r: &tokio_postgres::Row) -> Operation {
    Operation {
        id: r.get(0),
        kind: r.get(1),
        vmid: r.get::<_, Option<i32>>(2).map(|v| v as u32),
        vnet: r.get(3),
        node: r.get(4),
        status: r.get(5),
        net_index: r.get::<_, Option<i32>>(6).and_then(|v| u8::try_from(v).ok()),
        line: r.get(7),
        pending_keys: r.get(8),
        failed_nodes: r.get(9),
        error: r.get(10),
        result: r.get(11),
        request: r.get(12),
        requested_by: r.get(13),
        created_at: r.get(14),
        updated_at: r.get(15),
        finished_at: r.get(16),
    }
}

impl Operation {
    /// The operation as the API answers it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "kind": self.kind,
            "vmid": self.vmid,
            "vnet": self.vnet,
            "node": self.node,
            "status": self.status,
            "interface": self.net_index.map(|i| format!("net{i}")),
            "line": self.line,
            "pending_keys": self.pending_keys,
            "failed_nodes": self.failed_nodes,
            "error": self.error,
            "result": self.result,
            "request": self.request,
            "requested_by": self.requested_by,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        })
    }
}

/// Records a new `pending` operation; nothing when it exists already.
pub async fn create<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    id: Uuid,
    kind: &str,
    vmid: Option<u32>,
    vnet: Option<&str>,
    request: &Value,
    requested_by: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO net_operations (id, kind, vmid, vnet, request, requested_by) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO NOTHING",
            &[&id, &kind, &vmid.map(|v| v as i32), &vnet, request, &requested_by],
        )
        .await?;
    Ok(())
}

/// One operation.
pub async fn get(client: &tokio_postgres::Client, id: Uuid) -> Result<Option<Operation>, tokio_postgres::Error> {
    Ok(client
        .query_opt(&format!("SELECT {COLUMNS} FROM net_operations WHERE id = $1"), &[&id])
        .await?
        .as_ref()
        .map(from_row))
}

/// A container's operations, newest first.
pub async fn for_vmid(
    client: &tokio_postgres::Client,
    vmid: u32,
    limit: i64,
) -> Result<Vec<Operation>, tokio_postgres::Error> {
    Ok(client
        .query(
            &format!("SELECT {COLUMNS} FROM net_operations WHERE vmid = $1 ORDER BY created_at DESC LIMIT $2"),
            &[&(vmid as i32), &limit],
        )
        .await?
        .iter()
        .map(from_row)
        .collect())
}

/// Takes an operation up: created when it came straight from the bus, `running` unless it
/// has ended. Returns it as it now is.
pub async fn start(
    client: &tokio_postgres::Client,
    id: Uuid,
    kind: &str,
    vmid: Option<u32>,
    vnet: Option<&str>,
    request: &Value,
) -> Result<Operation, tokio_postgres::Error> {
    create(client, id, kind, vmid, vnet, request, None).await?;
    // A replayed dead letter takes a parked operation up again.
    client
        .execute(
            "UPDATE net_operations SET status = 'running', error = NULL, updated_at = now()
             WHERE id = $1 AND status IN ('pending', 'parked')",
            &[&id],
        )
        .await?;
    let row = client
        .query_one(&format!("SELECT {COLUMNS} FROM net_operations WHERE id = $1"), &[&id])
        .await?;
    Ok(from_row(&row))
}

/// Keeps the node, index and value chosen, before the write.
pub async fn plan(
    client: &tokio_postgres::Client,
    id: Uuid,
    node: &str,
    index: u8,
    line: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE net_operations SET node = $2, net_index = $3, line = $4, updated_at = now() WHERE id = $1",
            &[&id, &node, &i32::from(index), &line],
        )
        .await?;
    Ok(())
}

/// Ends an operation.
#[allow(clippy::too_many_arguments)]
pub async fn finish(
    client: &tokio_postgres::Client,
    id: Uuid,
    status: &str,
    pending_keys: &[String],
    failed_nodes: &[String],
    error: Option<&Value>,
    result: Option<&Value>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE net_operations SET status = $2, pending_keys = $3, failed_nodes = $4, error = $5,
                 result = COALESCE($6, result), updated_at = now(), finished_at = now()
             WHERE id = $1 AND status IN ('pending', 'running', 'parked')",
            &[&id, &status, &pending_keys, &failed_nodes, &error, &result],
        )
        .await?;
    Ok(())
}

/// Counts one event of a type and outcome (`ok` or `failed`), in Postgres for
/// `pvefleet net stats` and as the `pvefleet_net_events_total` metric.
pub async fn count_event(
    client: &tokio_postgres::Client,
    event: &str,
    outcome: &str,
) -> Result<(), tokio_postgres::Error> {
    metrics::counter!("pvefleet_net_events_total", "event" => event.to_string(), "outcome" => outcome.to_string())
        .increment(1);
    client
        .execute(
            "INSERT INTO net_event_stats (event, outcome, count) VALUES ($1, $2, 1)
             ON CONFLICT (event, outcome) DO UPDATE SET count = net_event_stats.count + 1, last_at = now()",
            &[&event, &outcome],
        )
        .await?;
    Ok(())
}

/// Every event type's executions and successes.
pub async fn stats(client: &tokio_postgres::Client) -> Result<Vec<(String, String, i64)>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT event, outcome, count FROM net_event_stats ORDER BY event, outcome",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
