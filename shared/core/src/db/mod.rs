//! The state store: a deadpool-postgres pool, embedded refinery migrations, inbox and outbox.

pub mod fault;
pub mod inbox;
pub mod outbox;
pub mod vmid_lock;

pub use vmid_lock::{AdvisoryLock, VmidLock};

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::DbSettings;

/// A Postgres error as one line, with the server's message and detail when there is one
/// (tokio-postgres's own `Display` says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => e.to_string(),
    }
}

type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];
type Fut<'a, T> = futures::future::BoxFuture<'a, Result<T, tokio_postgres::Error>>;

/// Runs statements on any kind of connection or transaction: tokio-postgres's and deadpool's.
/// The inbox, the outbox and handlers take this, so they join whatever transaction the caller
/// holds. On deadpool's connections and transactions a statement is prepared once per
/// connection and cached (deadpool's statement cache), so a hot statement is planned once,
/// not on every call; on a bare tokio-postgres client it is prepared each time.
pub trait Sql: Sync {
    /// Executes one statement and returns the affected row count.
    fn exec<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, u64>;
    /// Runs a query and returns every row.
    fn rows<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, Vec<tokio_postgres::Row>>;
    /// Runs a query that returns exactly one row.
    fn one<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, tokio_postgres::Row>;
    /// Runs a query that returns at most one row.
    fn opt<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, Option<tokio_postgres::Row>>;
}

/// Implements `Sql` by preparing each time, for tokio-postgres's own types.
macro_rules! sql_uncached {
    ($($ty:ty),*) => {$(
        impl Sql for $ty {
            fn exec<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, u64> {
                Box::pin(self.execute(sql, params))
            }
            fn rows<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, Vec<tokio_postgres::Row>> {
                Box::pin(self.query(sql, params))
            }
            fn one<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, tokio_postgres::Row> {
                Box::pin(self.query_one(sql, params))
            }
            fn opt<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, Option<tokio_postgres::Row>> {
                Box::pin(self.query_opt(sql, params))
            }
        }
    )*};
}

/// Implements `Sql` through deadpool's statement cache.
macro_rules! sql_cached {
    ($($ty:ty),*) => {$(
        impl Sql for $ty {
            fn exec<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, u64> {
                Box::pin(async move {
                    let st = self.prepare_cached(sql).await?;
                    self.execute(&st, params).await
                })
            }
            fn rows<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, Vec<tokio_postgres::Row>> {
                Box::pin(async move {
                    let st = self.prepare_cached(sql).await?;
                    self.query(&st, params).await
                })
            }
            fn one<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, tokio_postgres::Row> {
                Box::pin(async move {
                    let st = self.prepare_cached(sql).await?;
                    self.query_one(&st, params).await
                })
            }
            fn opt<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, Option<tokio_postgres::Row>> {
                Box::pin(async move {
                    let st = self.prepare_cached(sql).await?;
                    self.query_opt(&st, params).await
                })
            }
        }
    )*};
}

sql_uncached!(tokio_postgres::Client, tokio_postgres::Transaction<'_>);
sql_cached!(deadpool_postgres::ClientWrapper, deadpool_postgres::Transaction<'_>);

impl Sql for deadpool_postgres::Object {
    fn exec<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, u64> {
        let c: &deadpool_postgres::ClientWrapper = self;
        c.exec(sql, params)
    }
    fn rows<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, Vec<tokio_postgres::Row>> {
        let c: &deadpool_postgres::ClientWrapper = self;
        c.rows(sql, params)
    }
    fn one<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, tokio_postgres::Row> {
        let c: &deadpool_postgres::ClientWrapper = self;
        c.one(sql, params)
    }
    fn opt<'a>(&'a self, sql: &'a str, params: Params<'a>) -> Fut<'a, Option<tokio_postgres::Row>> {
        let c: &deadpool_postgres::ClientWrapper = self;
        c.opt(sql, params)
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
    let mut all: Vec<_> = embedded::migrations::runner().get_migrations().to_vec();
    // In version order, as they apply (V10 after V9, not after V1).
    all.sort_by_key(|m| m.version());
    all.iter().map(|m| m.to_string()).collect()
}

/// Runs `body` in one transaction on `client`: COMMIT when it returns `Ok`, ROLLBACK when it
/// returns `Err` (the error is returned as it came; a failed ROLLBACK is not worse than the
/// error, since Postgres drops the transaction with the connection). `body` is a future made
/// before the transaction starts; it runs only after BEGIN, on the same connection.
///
/// Used wherever a change spans several statements and must land whole or not at all: the
/// operator tools (retry-step, resume, dead-letter replay, edit and import) and the autoscaler's
/// action and alert records. (The inbox batch keeps its own pipelined BEGIN with a savepoint per
/// message; intake uses tokio-postgres's `Transaction` for its request-scoped writes.)
pub async fn in_tx<T, E>(
    client: &tokio_postgres::Client,
    body: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<tokio_postgres::Error>,
{
    client.batch_execute("BEGIN").await?;
    match body.await {
        Ok(v) => {
            client.batch_execute("COMMIT").await?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}
