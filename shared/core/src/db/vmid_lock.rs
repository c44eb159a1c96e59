//! Serialization across services and their replicas by Postgres session advisory locks: per
//! vmid (the provisioner, the autoscaler, nethotplug and the watchdog never act on one
//! container at once) and per SDN VNet name (two copies of one `vnet.ensure` never both create).

use std::time::Duration;

/// The advisory lock class for vmids (the first key of `pg_advisory_lock(int, int)`).
pub const VMID_LOCK_CLASS: i32 = 0x7076_6d00; // "pvm\0"

/// The advisory lock class for SDN VNet names.
pub const VNET_LOCK_CLASS: i32 = 0x7076_6e00; // "pvn\0"

/// A held advisory lock, released when dropped: in the background when a runtime is there
/// (the connection then returns to the pool), else by closing its session.
pub struct AdvisoryLock {
    conn: Option<deadpool_postgres::Object>,
    class: i32,
    key: i32,
}

/// The lock on one vmid.
pub type VmidLock = AdvisoryLock;

/// A name's key in its class: FNV-1a, stable across processes and versions. Two names that
/// share a key only wait for each other.
fn name_key(name: &str) -> i32 {
    let hash = name
        .bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    i32::from_ne_bytes(hash.to_ne_bytes())
}

impl AdvisoryLock {
    /// Waits for the lock on `vmid`, at most `timeout`. An uncontended lock costs one round
    /// trip (a try-lock); only a contended one sets `lock_timeout` and waits.
    pub async fn acquire(pool: &deadpool_postgres::Pool, vmid: u32, timeout: Duration) -> anyhow::Result<Self> {
        Self::acquire_key(pool, VMID_LOCK_CLASS, i32::try_from(vmid)?, timeout).await
    }

    /// Waits for the lock on SDN VNet `name`, at most `timeout`.
    pub async fn acquire_vnet(pool: &deadpool_postgres::Pool, name: &str, timeout: Duration) -> anyhow::Result<Self> {
        Self::acquire_key(pool, VNET_LOCK_CLASS, name_key(name), timeout).await
    }

    async fn acquire_key(
        pool: &deadpool_postgres::Pool,
        class: i32,
        key: i32,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        use crate::db::Sql;
        let conn = pool.get().await?;
        if !try_lock(&conn, class, key).await? {
            let ms = timeout.as_millis().max(1);
            conn.batch_execute(&format!("SET lock_timeout = {ms}")).await?;
            let waited = conn.exec("SELECT pg_advisory_lock($1, $2)", &[&class, &key]).await;
            let reset = conn.batch_execute("RESET lock_timeout").await;
            waited?;
            reset?;
        }
        Ok(Self {
            conn: Some(conn),
            class,
            key,
        })
    }

    /// Takes the lock on `vmid` only if nobody holds it: `None` when someone does (a worker
    /// is acting on that container right now, so the caller leaves it alone).
    pub async fn try_acquire(pool: &deadpool_postgres::Pool, vmid: u32) -> anyhow::Result<Option<Self>> {
        let conn = pool.get().await?;
        let key = i32::try_from(vmid)?;
        let got = try_lock(&conn, VMID_LOCK_CLASS, key).await?;
        Ok(got.then_some(Self {
            conn: Some(conn),
            class: VMID_LOCK_CLASS,
            key,
        }))
    }

    /// The session holding the lock, for the holder's own statements (so work under the lock
    /// needs no second connection from the pool).
    pub fn client(&self) -> Option<&deadpool_postgres::Object> {
        self.conn.as_ref()
    }
}

/// One try for the lock in `conn`'s session.
async fn try_lock(conn: &deadpool_postgres::Object, class: i32, key: i32) -> anyhow::Result<bool> {
    use crate::db::Sql;
    Ok(conn
        .one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &key])
        .await?
        .get(0))
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let (class, key) = (self.class, self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    use crate::db::Sql;
                    let unlocked = conn
                        .exec("SELECT pg_advisory_unlock($1, $2)", &[&class, &key])
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_s_key_is_stable() {
        // Replicas of different builds must agree on it.
        assert_eq!(super::name_key("web"), super::name_key("web"));
        assert_ne!(super::name_key("web"), super::name_key("web2"));
        assert_eq!(super::name_key(""), 0x811c_9dc5_u32 as i32);
    }
}
