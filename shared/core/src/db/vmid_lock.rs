//! Per-vmid serialization across the provisioner, the autoscaler and nethotplug, and across
//! their replicas: a Postgres session advisory lock keyed by the vmid.

use std::time::Duration;

/// The advisory lock class for vmids (the first key of `pg_advisory_lock(int, int)`).
pub const VMID_LOCK_CLASS: i32 = 0x7076_6d00; // "pvm\0"

/// A held vmid lock, released when dropped: in the background when a runtime is there (the
/// connection then returns to the pool), else by closing its session.
pub struct VmidLock {
    conn: Option<deadpool_postgres::Object>,
    vmid: i32,
}

impl VmidLock {
    /// Waits for the lock on `vmid`, at most `timeout`. An uncontended lock costs one round
    /// trip (a try-lock); only a contended one sets `lock_timeout` and waits.
    pub async fn acquire(pool: &deadpool_postgres::Pool, vmid: u32, timeout: Duration) -> anyhow::Result<Self> {
        use crate::db::Sql;
        let conn = pool.get().await?;
        let vmid = i32::try_from(vmid)?;
        if !try_lock(&conn, vmid).await? {
            let ms = timeout.as_millis().max(1);
            conn.batch_execute(&format!("SET lock_timeout = {ms}")).await?;
            let waited = conn
                .exec("SELECT pg_advisory_lock($1, $2)", &[&VMID_LOCK_CLASS, &vmid])
                .await;
            let reset = conn.batch_execute("RESET lock_timeout").await;
            waited?;
            reset?;
        }
        Ok(Self { conn: Some(conn), vmid })
    }
}

/// One try for the lock on `vmid` in `conn`'s session.
async fn try_lock(conn: &deadpool_postgres::Object, vmid: i32) -> anyhow::Result<bool> {
    use crate::db::Sql;
    Ok(conn
        .one("SELECT pg_try_advisory_lock($1, $2)", &[&VMID_LOCK_CLASS, &vmid])
        .await?
        .get(0))
}

impl VmidLock {
    /// Takes the lock on `vmid` only if nobody holds it: `None` when someone does (a worker
    /// is acting on that container right now, so the caller leaves it alone).
    pub async fn try_acquire(pool: &deadpool_postgres::Pool, vmid: u32) -> anyhow::Result<Option<Self>> {
        let conn = pool.get().await?;
        let vmid = i32::try_from(vmid)?;
        let got = try_lock(&conn, vmid).await?;
        Ok(got.then_some(Self { conn: Some(conn), vmid }))
    }

    /// The session holding the lock, for the holder's own statements (so work under the lock
    /// needs no second connection from the pool).
    pub fn client(&self) -> Option<&deadpool_postgres::Object> {
        self.conn.as_ref()
    }
}

impl Drop for VmidLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let vmid = self.vmid;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    use crate::db::Sql;
                    let unlocked = conn
                        .exec("SELECT pg_advisory_unlock($1, $2)", &[&VMID_LOCK_CLASS, &vmid])
                        .await
                        .is_ok();
                    if !unlocked {
                        // Closing the session frees its advisory locks.
                        drop(deadpool_postgres::Object::take(conn));
                    }
                });
            }
            Err(_) => drop(deadpool_postgres::Object::take(conn)),
        }
    }
}
