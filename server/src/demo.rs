//! Demo data for a first start: CHAMP and a small synthetic arithmetic set,
//! so a new user sees real questions at once.

use std::path::Path;

use serde_json::json;
use sqlx::PgPool;

use crate::error::Result;
use crate::{datasets, import};

pub const SYNTHETIC_NAME: &str = "arithmetic-demo";
const SYNTHETIC_SEED: u64 = 7;
const MARKER: &str = "demo_data_imported";

/// Imports the demo datasets once per database. A user who later deletes
/// them does not get them back on the next start.
pub async fn import_once(pool: &PgPool, data_dir: &Path) -> Result<()> {
    let done = sqlx::query_scalar!("SELECT value FROM app_settings WHERE key = $1", MARKER)
        .fetch_optional(pool)
        .await?
        .is_some();
    if done {
        return Ok(());
    }
    let mut complete = true;
    if !datasets::exists_by_name(pool, import::CHAMP_NAME).await? {
        let path = data_dir.join(import::champ::DEFAULT_PATH);
        if path.exists() {
            let dataset = import::from_champ_file(&path, import::CHAMP_NAME.to_owned()).await?;
            let summary = import::store(pool, dataset).await?;
            tracing::info!(questions = summary.question_count, "imported demo dataset CHAMP");
        } else {
            tracing::warn!(path = %path.display(), "CHAMP not found, skipping it (`make run` fetches it)");
            complete = false;
        }
    }
    if !datasets::exists_by_name(pool, SYNTHETIC_NAME).await? {
        let dataset =
            import::from_synthetic(SYNTHETIC_NAME.to_owned(), SYNTHETIC_SEED, import::synthetic::DEFAULT_COUNT);
        import::store(pool, dataset).await?;
        tracing::info!("imported demo dataset {SYNTHETIC_NAME}");
    }
    if complete {
        sqlx::query!(
            "INSERT INTO app_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            MARKER,
            json!(true)
        )
        .execute(pool)
        .await?;
    }
    Ok(())
}
