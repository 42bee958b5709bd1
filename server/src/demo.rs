//! Demo data for a first start: CHAMP and a small synthetic arithmetic set,
//! so a new user sees real questions at once, and a small demo run.

use std::path::Path;

use serde_json::json;
use sqlx::PgPool;

use rlt_types::{CreateExperiment, CreateRun, ExperimentConfig, SubmitJob};

use crate::error::Result;
use crate::jobs::{Registry, submit};
use crate::{datasets, experiments, import, questions, runs};

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

const RUN_MARKER: &str = "demo_run_queued";
const DEMO_QUESTIONS: usize = 4;

/// Once per database: an experiment on the first CHAMP questions with the
/// default model as teacher and student, a run, and a small generate job
/// that scores as it goes, so a first start shows live progress, curves and
/// heatmaps within minutes. Problems are logged, never fatal.
pub async fn start_run_once(pool: &PgPool, registry: &Registry, model_id: i64) {
    if let Err(e) = try_start_run_once(pool, registry, model_id).await {
        tracing::warn!(error = %e, "could not queue the demo run");
    }
}

async fn try_start_run_once(pool: &PgPool, registry: &Registry, model_id: i64) -> Result<()> {
    let done = sqlx::query_scalar!("SELECT value FROM app_settings WHERE key = $1", RUN_MARKER)
        .fetch_optional(pool)
        .await?
        .is_some();
    if done {
        return Ok(());
    }
    let Some(champ) = datasets::list(pool).await?.into_iter().find(|d| d.name == import::CHAMP_NAME) else {
        return Ok(());
    };
    let filter = rlt_types::QuestionFilter { limit: Some(DEMO_QUESTIONS as u32), ..Default::default() };
    let question_ids: Vec<i64> = questions::list(pool, champ.id, &filter).await?.items.iter().map(|q| q.id).collect();
    let mut config = ExperimentConfig::default();
    config.sampling.num_samples = 4;
    config.sampling.max_new_tokens = 256;
    config.score_after_generate = true;
    let experiment = experiments::create(
        pool,
        CreateExperiment {
            name: "champ-demo".to_owned(),
            description: "Demo: SmolLM2-135M-Instruct explaining the first CHAMP problems to itself".to_owned(),
            teacher_model_id: model_id,
            student_model_id: model_id,
            dataset_id: champ.id,
            question_ids: Some(question_ids),
            config,
        },
    )
    .await?;
    let run = runs::create(
        pool,
        experiment.id,
        CreateRun { name: Some("baseline".to_owned()), seed: Some(1), config_version: None },
    )
    .await?;
    let job = submit::submit(
        pool,
        registry,
        SubmitJob {
            kind: "generate".to_owned(),
            params: json!({"run_id": run.id}),
            device: None,
            priority: None,
            max_attempts: None,
        },
    )
    .await?;
    sqlx::query!(
        "INSERT INTO app_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        RUN_MARKER,
        json!(run.id)
    )
    .execute(pool)
    .await?;
    tracing::info!(run = run.id, job = job.id, "queued the demo run");
    Ok(())
}
