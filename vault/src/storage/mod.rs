//! The vault's SQL, one module per capability: [`tokens`], [`charges`], [`keys`] and
//! [`audit`]. Every query takes an executor; the caller (the writer or a capability) decides
//! transaction bounds.
//!
//! Queries are checked at run time, not compile time (no database is needed to build); each one
//! is exercised by the Postgres-backed tests. The sandbox acquirer keeps its own tables and SQL
//! in [`crate::connector::sandbox`], as an external system would.

pub mod audit;
pub mod charges;
pub mod keys;
pub mod tokens;

use sqlx::PgConnection;

use crate::error::Error;

/// Marks the start of one job's writes inside a batch transaction.
pub async fn savepoint(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::query("SAVEPOINT tandem_job").execute(conn).await?;
    Ok(())
}

/// Undoes the current job's writes, keeping the rest of the batch.
pub async fn rollback_to_savepoint(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::query("ROLLBACK TO SAVEPOINT tandem_job")
        .execute(conn)
        .await?;
    Ok(())
}

/// Keeps the current job's writes.
pub async fn release_savepoint(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::query("RELEASE SAVEPOINT tandem_job")
        .execute(conn)
        .await?;
    Ok(())
}
