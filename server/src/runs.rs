//! Runs: one execution of an experiment at one config version, with the
//! provenance (config hash, seed, model hashes, code version) that lets
//! every result be traced back.

use rlt_types::{CreateRun, MetricPoint, Run};
use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::{experiments, models};

/// The git commit this binary was built from.
pub const CODE_VERSION: &str = env!("RLT_CODE_VERSION");

pub async fn create(pool: &PgPool, experiment_id: i64, req: CreateRun) -> Result<Run> {
    let experiment = experiments::get(pool, experiment_id).await?;
    let version = req.config_version.unwrap_or(experiment.version);
    let config = sqlx::query!(
        "SELECT id, config_hash FROM experiment_configs WHERE experiment_id = $1 AND version = $2",
        experiment_id,
        version
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| {
        Error::invalid(
            Some("config_version".to_owned()),
            format!("experiment {experiment_id} has no config version {version}"),
        )
    })?;
    let teacher = models::get(pool, experiment.teacher_model_id).await?;
    let student = models::get(pool, experiment.student_model_id).await?;
    // Non-negative so every consumer (u64 seeds in the engine) can take it.
    let seed = match req.seed {
        Some(s) if s < 0 => return Err(Error::invalid(Some("seed".to_owned()), "seed must be >= 0")),
        Some(s) => s,
        None => (rand::random::<u64>() >> 1) as i64,
    };
    let name = req.name.unwrap_or_default();
    let id = sqlx::query_scalar!(
        "INSERT INTO runs (experiment_id, config_id, name, seed, config_hash, teacher_sha256, student_sha256, code_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        experiment_id,
        config.id,
        name,
        seed,
        config.config_hash,
        teacher.sha256,
        student.sha256,
        CODE_VERSION,
    )
    .fetch_one(pool)
    .await?;
    get(pool, id).await
}

struct Row {
    id: i64,
    experiment_id: i64,
    experiment_name: String,
    config_id: i64,
    config_version: i32,
    name: String,
    status: String,
    seed: i64,
    config_hash: String,
    teacher_sha256: String,
    student_sha256: String,
    code_version: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<Row> for Run {
    fn from(r: Row) -> Self {
        Run {
            id: r.id,
            experiment_id: r.experiment_id,
            experiment_name: r.experiment_name,
            config_id: r.config_id,
            config_version: r.config_version,
            name: r.name,
            status: r.status,
            seed: r.seed,
            config_hash: r.config_hash,
            teacher_sha256: r.teacher_sha256,
            student_sha256: r.student_sha256,
            code_version: r.code_version,
            created_at: r.created_at.to_rfc3339(),
        }
    }
}

/// A run's status follows its jobs: running while one is queued or running,
/// else the newest job's outcome, and `created` before its first job.
pub async fn get(pool: &PgPool, id: i64) -> Result<Run> {
    sqlx::query_as!(
        Row,
        r#"SELECT r.id, r.experiment_id, e.name AS experiment_name, r.config_id, c.version AS config_version, r.name,
                COALESCE(js.status, r.status) AS "status!", r.seed, r.config_hash, r.teacher_sha256, r.student_sha256,
                r.code_version, r.created_at
         FROM runs r JOIN experiments e ON e.id = r.experiment_id JOIN experiment_configs c ON c.id = r.config_id
         LEFT JOIN LATERAL (
             SELECT CASE WHEN bool_or(j.status IN ('queued', 'running')) THEN 'running'
                         ELSE (array_agg(j.status ORDER BY j.id DESC))[1] END AS status
             FROM jobs j WHERE j.run_id = r.id) js ON true
         WHERE r.id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?
    .map(Into::into)
    .ok_or_else(|| Error::NotFound(format!("run {id}")))
}

pub async fn list(pool: &PgPool, experiment_id: Option<i64>) -> Result<Vec<Run>> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT r.id, r.experiment_id, e.name AS experiment_name, r.config_id, c.version AS config_version, r.name,
                COALESCE(js.status, r.status) AS "status!", r.seed, r.config_hash, r.teacher_sha256, r.student_sha256,
                r.code_version, r.created_at
         FROM runs r JOIN experiments e ON e.id = r.experiment_id JOIN experiment_configs c ON c.id = r.config_id
         LEFT JOIN LATERAL (
             SELECT CASE WHEN bool_or(j.status IN ('queued', 'running')) THEN 'running'
                         ELSE (array_agg(j.status ORDER BY j.id DESC))[1] END AS status
             FROM jobs j WHERE j.run_id = r.id) js ON true
         WHERE ($1::bigint IS NULL OR r.experiment_id = $1)
         ORDER BY r.id DESC"#,
        experiment_id
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Metric points of a run, optionally one metric, in step order.
pub async fn metrics(pool: &PgPool, run_id: i64, name: Option<&str>) -> Result<Vec<MetricPoint>> {
    get(pool, run_id).await?;
    let rows = sqlx::query!(
        "SELECT name, step, value, ts FROM metrics WHERE run_id = $1 AND ($2::text IS NULL OR name = $2)
         ORDER BY name, step",
        run_id,
        name
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| MetricPoint {
            name: r.name,
            step: r.step,
            value: r.value.is_finite().then_some(r.value),
            ts: r.ts.to_rfc3339(),
        })
        .collect())
}
