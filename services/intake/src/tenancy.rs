//! Whose a resource is. An owner's token reaches only its owner's sites, the containers of
//! those sites (their network, operations and autoscaling) and their sagas; anything else is
//! answered 404, as if it did not exist, so one owner cannot learn of another's resources. An
//! operator's token reaches all.

use axum::http::StatusCode;
use uuid::Uuid;

use crate::auth::Caller;
use crate::{Problem, db_problem};

/// Whose resources a listing shows: an owner's token its own owner's (asking for another's is
/// 403, naming `what`), an operator's token the owner it asks for, or all.
pub(crate) fn list_owner(caller: &Caller, asked: Option<&String>, what: &str) -> Result<Option<String>, Problem> {
    match (&caller.owner, asked) {
        (Some(mine), Some(asked)) if mine != asked => Err(Problem::field(
            StatusCode::FORBIDDEN,
            "forbidden",
            "owner",
            format!("This token sees the {what} of owner '{mine}' only."),
        )),
        (Some(mine), _) => Ok(Some(mine.clone())),
        (None, asked) => Ok(asked.cloned()),
    }
}

/// The owner of the live site on container `vmid`, if one is.
pub(crate) async fn vmid_owner<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    vmid: u32,
) -> Result<Option<String>, Problem> {
    let row = client
        .query_opt(
            "SELECT owner FROM sites WHERE vmid = $1 AND state <> 'deleted' ORDER BY created_at DESC LIMIT 1",
            &[&(vmid as i32)],
        )
        .await
        .map_err(db_problem)?;
    Ok(row.map(|r| r.get(0)))
}

/// Ok when the caller may reach container `vmid`: an operator always; an owner when the
/// container is one of its sites'. Else 404.
pub(crate) async fn container(pool: &deadpool_postgres::Pool, caller: &Caller, vmid: u32) -> Result<(), Problem> {
    if caller.owner.is_none() {
        return Ok(());
    }
    let client = pool.get().await.map_err(db_problem)?;
    match vmid_owner(&**client, vmid).await? {
        Some(owner) if caller.sees(&owner) => Ok(()),
        _ => Err(no_container(vmid)),
    }
}

pub(crate) fn no_container(vmid: u32) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("Container {vmid} does not exist (or is not one of this token's sites)."),
    )
}

/// The owner of saga `id`: of its site, of the site intake accepted it for, or of the
/// container its network operation is on. `Ok(None)`: no such saga is known; `Ok(Some(None))`:
/// a saga of no owner (only operators reach it).
pub(crate) async fn saga_owner(client: &tokio_postgres::Client, id: Uuid) -> Result<Option<Option<String>>, Problem> {
    let row = client
        .query_opt(
            "SELECT coalesce(
                    (SELECT s.owner FROM sagas g JOIN sites s ON s.id = g.site_id WHERE g.id = $1),
                    (SELECT a.owner FROM accepted_sagas a WHERE a.saga_id = $1),
                    (SELECT s.owner FROM net_operations o JOIN sites s ON s.vmid = o.vmid AND s.state <> 'deleted'
                      WHERE o.id = $1 ORDER BY s.created_at DESC LIMIT 1)),
                    EXISTS (SELECT 1 FROM sagas WHERE id = $1) OR EXISTS (SELECT 1 FROM accepted_sagas WHERE saga_id = $1)",
            &[&id],
        )
        .await
        .map_err(db_problem)?;
    Ok(row.and_then(|r| r.get::<_, bool>(1).then(|| r.get(0))))
}

/// Ok when the caller may see saga `id`; 404 when it is unknown or another owner's.
pub(crate) async fn saga(pool: &deadpool_postgres::Pool, caller: &Caller, id: Uuid) -> Result<(), Problem> {
    let client = pool.get().await.map_err(db_problem)?;
    match saga_owner(&client, id).await? {
        Some(_) if caller.owner.is_none() => Ok(()),
        Some(Some(owner)) if caller.sees(&owner) => Ok(()),
        _ => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("No saga {id}."),
        )),
    }
}
