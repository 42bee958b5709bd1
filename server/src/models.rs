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

/// The default model's name in the registry.
pub const DEFAULT_NAME: &str = "SmolLM2-135M-Instruct";
/// Where `scripts/fetch-assets.sh` puts it, under the data directory.
pub const DEFAULT_FILE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Registers a model file or Hugging Face directory by its content hash and
/// architecture (read from the files, not trusted from the caller).
pub async fn register(pool: &PgPool, name: &str, path: &std::path::Path) -> Result<ModelInfo> {
    let owned = path.to_path_buf();
    let (sha256, architecture, format) = tokio::task::spawn_blocking(move || rlt_engine::load::fingerprint(&owned))
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .map_err(|e| Error::invalid(Some("path".to_owned()), format!("{}: {e}", path.display())))?;
    upsert(pool, name, format, &path.display().to_string(), &sha256, &architecture).await
}

/// The default model, registered on first use.
pub async fn ensure_default(pool: &PgPool, data_dir: &std::path::Path) -> Result<ModelInfo> {
    let path = data_dir.join(DEFAULT_FILE);
    let path = path.canonicalize().map_err(|e| {
        Error::invalid(
            Some("model".to_owned()),
            format!("the default model {} is missing ({e}); `make run` fetches it", path.display()),
        )
    })?;
    let existing = sqlx::query_as!(
        Row,
        "SELECT id, name, format, path, sha256, architecture, created_at FROM models WHERE name = $1 AND path = $2
         ORDER BY id DESC LIMIT 1",
        DEFAULT_NAME,
        path.display().to_string()
    )
    .fetch_optional(pool)
    .await?;
    match existing {
        Some(row) => Ok(row.into()),
        None => register(pool, DEFAULT_NAME, &path).await,
    }
}
