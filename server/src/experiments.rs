//! Experiments and their append-only config versions.

use rlt_types::{ConfigVersion, CreateExperiment, Experiment, ExperimentConfig};
use sqlx::PgPool;

use crate::error::{Error, Result, ResultExt};
use crate::{datasets, models};

/// sha256 of the config's canonical JSON (struct field order is fixed).
pub fn config_hash(config: &ExperimentConfig) -> String {
    config_hash_of(config)
}

/// sha256 of any config's JSON, e.g. a reward config.
pub fn config_hash_of<T: serde::Serialize>(config: &T) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(serde_json::to_vec(config).expect("configs serialize")))
}

fn validate_config(config: &ExperimentConfig) -> Result<()> {
    match config.problems().into_iter().next() {
        Some((field, message)) => {
            Err(Error::invalid(Some(format!("config.{field}")), format!("config.{field} {message}")))
        }
        None => Ok(()),
    }
}

pub async fn create(pool: &PgPool, req: CreateExperiment) -> Result<Experiment> {
    let name = req.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::invalid(Some("name".to_owned()), "name must be 1 to 200 characters"));
    }
    validate_config(&req.config)?;
    for (field, id) in [("teacher_model_id", req.teacher_model_id), ("student_model_id", req.student_model_id)] {
        models::get(pool, id)
            .await
            .map_err(|_| Error::invalid(Some(field.to_owned()), format!("model {id} does not exist")))?;
    }
    datasets::get(pool, req.dataset_id).await.map_err(|_| {
        Error::invalid(Some("dataset_id".to_owned()), format!("dataset {} does not exist", req.dataset_id))
    })?;
    if let Some(ids) = &req.question_ids {
        if ids.is_empty() {
            return Err(Error::invalid(
                Some("question_ids".to_owned()),
                "question_ids must not be empty; omit it for all questions",
            ));
        }
        let found = sqlx::query_scalar!(
            r#"SELECT count(DISTINCT id) AS "n!" FROM questions WHERE dataset_id = $1 AND id = ANY($2)"#,
            req.dataset_id,
            ids
        )
        .fetch_one(pool)
        .await?;
        let distinct = ids.iter().collect::<std::collections::BTreeSet<_>>().len() as i64;
        if found != distinct {
            return Err(Error::invalid(
                Some("question_ids".to_owned()),
                format!("{} of the question ids are not in dataset {}", distinct - found, req.dataset_id),
            ));
        }
    }
    let config_json = serde_json::to_value(&req.config).expect("configs serialize");
    let hash = config_hash(&req.config);
    let mut tx = pool.begin().await?;
    let id = sqlx::query_scalar!(
        "INSERT INTO experiments (name, description, teacher_model_id, student_model_id, dataset_id, question_ids)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        name,
        req.description,
        req.teacher_model_id,
        req.student_model_id,
        req.dataset_id,
        req.question_ids.as_deref(),
    )
    .fetch_one(&mut *tx)
    .await
    .on_constraint("experiments_name_key", || {
        Error::conflict("name", format!("an experiment named '{name}' already exists"))
    })?;
    sqlx::query!(
        "INSERT INTO experiment_configs (experiment_id, version, config, config_hash) VALUES ($1, 1, $2, $3)",
        id,
        config_json,
        hash
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Adds the next config version. Earlier versions, and the runs that use
/// them, stay exactly as they were.
pub async fn add_version(pool: &PgPool, id: i64, config: ExperimentConfig) -> Result<ConfigVersion> {
    validate_config(&config)?;
    get(pool, id).await?;
    let config_json = serde_json::to_value(&config).expect("configs serialize");
    let hash = config_hash(&config);
    // Two concurrent edits race for the same version number; the unique
    // constraint turns the loser into a 409 instead of a lost update.
    let version_id = sqlx::query_scalar!(
        "INSERT INTO experiment_configs (experiment_id, version, config, config_hash)
         SELECT $1, coalesce(max(version), 0) + 1, $2, $3 FROM experiment_configs WHERE experiment_id = $1
         RETURNING id",
        id,
        config_json,
        hash
    )
    .fetch_one(pool)
    .await
    .on_constraint("experiment_configs_experiment_id_version_key", || {
        Error::conflict("config", "the config was edited concurrently; reload and try again")
    })?;
    versions(pool, id)
        .await?
        .into_iter()
        .find(|v| v.id == version_id)
        .ok_or_else(|| Error::NotFound("config version".into()))
}

struct Row {
    id: i64,
    name: String,
    description: String,
    teacher_model_id: i64,
    student_model_id: i64,
    dataset_id: i64,
    question_ids: Option<Vec<i64>>,
    created_at: chrono::DateTime<chrono::Utc>,
    version: i32,
    config: serde_json::Value,
    config_hash: String,
}

fn to_experiment(r: Row) -> Result<Experiment> {
    Ok(Experiment {
        id: r.id,
        name: r.name,
        description: r.description,
        teacher_model_id: r.teacher_model_id,
        student_model_id: r.student_model_id,
        dataset_id: r.dataset_id,
        question_ids: r.question_ids,
        version: r.version,
        config: parse_stored(r.config)?,
        config_hash: r.config_hash,
        created_at: r.created_at.to_rfc3339(),
    })
}

fn parse_stored(config: serde_json::Value) -> Result<ExperimentConfig> {
    serde_json::from_value(config).map_err(|e| Error::Internal(anyhow::anyhow!("stored config does not parse: {e}")))
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Experiment> {
    let row = sqlx::query_as!(
        Row,
        r#"SELECT e.id, e.name, e.description, e.teacher_model_id, e.student_model_id, e.dataset_id, e.question_ids,
                  e.created_at, c.version, c.config, c.config_hash
           FROM experiments e
           JOIN LATERAL (SELECT version, config, config_hash FROM experiment_configs
                         WHERE experiment_id = e.id ORDER BY version DESC LIMIT 1) c ON true
           WHERE e.id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| Error::NotFound(format!("experiment {id}")))?;
    to_experiment(row)
}

pub async fn list(pool: &PgPool) -> Result<Vec<Experiment>> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.id, e.name, e.description, e.teacher_model_id, e.student_model_id, e.dataset_id, e.question_ids,
                  e.created_at, c.version, c.config, c.config_hash
           FROM experiments e
           JOIN LATERAL (SELECT version, config, config_hash FROM experiment_configs
                         WHERE experiment_id = e.id ORDER BY version DESC LIMIT 1) c ON true
           ORDER BY e.id DESC"#
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(to_experiment).collect()
}

pub async fn versions(pool: &PgPool, id: i64) -> Result<Vec<ConfigVersion>> {
    let rows = sqlx::query!(
        r#"SELECT c.id, c.version, c.config, c.config_hash, c.created_at,
                  (SELECT count(*) FROM runs r WHERE r.config_id = c.id) AS "run_count!"
           FROM experiment_configs c WHERE c.experiment_id = $1 ORDER BY c.version"#,
        id
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(ConfigVersion {
                id: r.id,
                version: r.version,
                config: parse_stored(r.config)?,
                config_hash: r.config_hash,
                created_at: r.created_at.to_rfc3339(),
                run_count: r.run_count,
            })
        })
        .collect()
}
