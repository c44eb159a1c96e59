//! A throwaway Postgres database per test, dropped when the test ends.

use std::process::Command;

use tokio_postgres::NoTls;

/// The server for tests (`PVEFLEET_TEST_PG`, default `postgres://postgres@127.0.0.1:5432`).
pub fn pg_base() -> String {
    std::env::var("PVEFLEET_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database that exists for one test.
pub struct TestDb {
    name: String,
}

impl TestDb {
    /// A name for a database that does not exist yet; the app creates it (as it would in
    /// production) when it connects with `create_database` on.
    pub fn fresh_name() -> Self {
        Self {
            name: format!("pvefleet_test_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Creates the database now.
    pub async fn create() -> anyhow::Result<Self> {
        let db = Self::fresh_name();
        let (client, conn) = tokio_postgres::connect(&format!("{}/postgres", pg_base()), NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE \"{}\"", db.name))
            .await?;
        Ok(db)
    }

    /// The URL.
    pub fn url(&self) -> String {
        format!("{}/{}", pg_base(), self.name)
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A plain client.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url(), NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let _ = Command::new("psql")
            .args([&format!("{}/postgres", pg_base()), "-q", "-c", &sql])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}
