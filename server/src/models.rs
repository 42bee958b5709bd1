//! The model registry: every model a run or reward refers to, by content
//! hash.

use rlt_types::ModelInfo;
use sqlx::PgPool;

use crate::error::{Error, Result};

struct Row {
    id: i64,
    name: String,
    format: String,
    path: String,
    sha256: String,
    architecture: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<Row> for ModelInfo {
    fn from(r: Row) -> Self {
        ModelInfo {
            id: r.id,
            name: r.name,
            format: r.format,
            path: r.path,
            sha256: r.sha256,
            architecture: r.architecture,
            created_at: r.created_at.to_rfc3339(),
        }
    }
}

/// Registers a model, or returns the existing row for the same name and
/// content (registering twice is harmless).
pub async fn upsert(
    pool: &PgPool,
    name: &str,
    format: &str,
    path: &str,
    sha256: &str,
    architecture: &str,
) -> Result<ModelInfo> {
    let row = sqlx::query_as!(
        Row,
        "INSERT INTO models (name, format, path, sha256, architecture) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name, sha256) DO UPDATE SET path = EXCLUDED.path
         RETURNING id, name, format, path, sha256, architecture, created_at",
        name,
        format,
        path,
        sha256,
        architecture,
    )
    .fetch_one(pool)
    .await?;
    Ok(row.into())
}

pub async fn list(pool: &PgPool) -> Result<Vec<ModelInfo>> {
    let rows =
        sqlx::query_as!(Row, "SELECT id, name, format, path, sha256, architecture, created_at FROM models ORDER BY id")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub async fn get(pool: &PgPool, id: i64) -> Result<ModelInfo> {
    sqlx::query_as!(
        Row,
        "SELECT id, name, format, path, sha256, architecture, created_at FROM models WHERE id = $1",
        id
    )
    .fetch_optional(pool)
    .await?
    .map(Into::into)
    .ok_or_else(|| Error::NotFound(format!("model {id}")))
}
