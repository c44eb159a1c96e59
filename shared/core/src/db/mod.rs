//! The state store: a deadpool-postgres pool, embedded refinery migrations, inbox and outbox.

pub mod inbox;
pub mod outbox;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::DbSettings;

/// Runs a statement on any kind of connection or transaction: tokio-postgres's and deadpool's.
/// The inbox and outbox take this, so they join whatever transaction the caller holds.
pub trait Execute: Sync {
    /// Executes one statement and returns the affected row count.
    fn exec<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)],
    ) -> futures::future::BoxFuture<'a, Result<u64, tokio_postgres::Error>>;
}

impl Execute for tokio_postgres::Client {
    fn exec<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)],
    ) -> futures::future::BoxFuture<'a, Result<u64, tokio_postgres::Error>> {
        Box::pin(self.execute(sql, params))
    }
}

impl Execute for tokio_postgres::Transaction<'_> {
    fn exec<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)],
    ) -> futures::future::BoxFuture<'a, Result<u64, tokio_postgres::Error>> {
        Box::pin(self.execute(sql, params))
    }
}

impl Execute for deadpool_postgres::Transaction<'_> {
    fn exec<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)],
    ) -> futures::future::BoxFuture<'a, Result<u64, tokio_postgres::Error>> {
        let tx: &tokio_postgres::Transaction<'_> = self;
        Box::pin(tx.execute(sql, params))
    }
}

impl Execute for deadpool_postgres::Object {
    fn exec<'a>(
        &'a self,
        sql: &'a str,
        params: &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)],
    ) -> futures::future::BoxFuture<'a, Result<u64, tokio_postgres::Error>> {
        let c: &tokio_postgres::Client = self;
        Box::pin(c.execute(sql, params))
    }
}

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("invalid database URL {url}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database cannot be reached or refused a statement.
    #[error("database {what} failed")]
    Postgres {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The pool could not be built or give a connection.
    #[error("database pool")]
    Pool(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A migration failed.
    #[error("migration failed")]
    Migration(#[source] refinery::Error),
}

/// Connects, creating the database first when it is missing and `create_database` is on.
pub async fn connect(settings: &DbSettings) -> Result<Pool, DbError> {
    let redacted = settings.url.redacted();
    let mut config = tokio_postgres::Config::from_str(settings.url.expose()).map_err(|source| DbError::Url {
        url: redacted.clone(),
        source,
    })?;
    // No database call may hang: statements and idle transactions have deadlines, and a dead
    // peer is noticed by TCP keepalives instead of the kernel's two hours.
    let limits = format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        settings.statement_timeout.as_millis(),
        settings.statement_timeout.as_millis().saturating_mul(2)
    );
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {limits}"),
        _ => limits,
    };
    config
        .options(&options)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .connect_timeout(settings.acquire_timeout);
    if settings.create_database {
        ensure_database(&config).await?;
    }
    // Fast recycling: the runner never gives a connection back mid-transaction (batch.rs closes
    // it instead), and tokio-postgres transactions roll back when dropped.
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(settings.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.acquire_timeout))
        .create_timeout(Some(settings.acquire_timeout))
        .build()
        .map_err(|e| DbError::Pool(Box::new(e)))?;
    // Fail fast on a wrong URL instead of on the first message.
    drop(pool.get().await.map_err(|e| DbError::Pool(Box::new(e)))?);
    Ok(pool)
}

/// Creates the configured database when it does not exist and the user has the right to.
async fn ensure_database(config: &tokio_postgres::Config) -> Result<(), DbError> {
    let Some(name) = config.get_dbname().map(str::to_string) else {
        return Ok(());
    };
    match try_connect(config).await {
        Ok(()) => return Ok(()),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(source) => {
            return Err(DbError::Postgres {
                what: "connect",
                source,
            });
        }
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, conn) = admin.connect(NoTls).await.map_err(|source| DbError::Postgres {
        what: "connect (to create the database)",
        source,
    })?;
    tokio::spawn(conn);
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match client.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(database = %name, "Created the database.");
            Ok(())
        }
        // Another process created it at the same moment.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(source) => Err(DbError::Postgres {
            what: "CREATE DATABASE",
            source,
        }),
    }
}

async fn try_connect(config: &tokio_postgres::Config) -> Result<(), tokio_postgres::Error> {
    let (client, conn) = config.connect(NoTls).await?;
    let handle = tokio::spawn(conn);
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(1), handle).await;
    Ok(())
}

/// Applies the embedded migrations. Serialized by an advisory lock, so replicas starting
/// together do not race; returns the names of the migrations applied now.
pub async fn migrate(pool: &Pool) -> Result<Vec<String>, DbError> {
    const MIGRATION_LOCK: i64 = 0x7076_6566_6c65_6574; // "pvefleet"
    let mut client = pool.get().await.map_err(|e| DbError::Pool(Box::new(e)))?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|source| DbError::Postgres {
            what: "migration lock",
            source,
        })?;
    let raw: &mut tokio_postgres::Client = &mut client;
    let report = embedded::migrations::runner().run_async(raw).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = report.map_err(DbError::Migration)?;
    Ok(report.applied_migrations().iter().map(|m| m.to_string()).collect())
}

/// The migrations built into this binary, as `V<n>__<name>`.
pub fn embedded_migrations() -> Vec<String> {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect()
}
