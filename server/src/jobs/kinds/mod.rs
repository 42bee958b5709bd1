//! The job kinds. Each is one module implementing
//! [`JobKind`](super::JobKind); [`super::Registry::standard`] lists them.

pub mod generate;
pub mod score;

use rlt_types::{Experiment, ExperimentConfig, ModelInfo, Run};
use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::{experiments, models, runs};

/// A run with everything a job needs to act for it.
pub struct RunContext {
    pub run: Run,
    pub experiment: Experiment,
    /// The config version the run uses (not necessarily the newest).
    pub config: ExperimentConfig,
    pub teacher: ModelInfo,
    pub student: ModelInfo,
}

pub async fn run_context(db: &PgPool, run_id: i64) -> Result<RunContext> {
    let run = runs::get(db, run_id)
        .await
        .map_err(|_| Error::invalid(Some("run_id".to_owned()), format!("run {run_id} does not exist")))?;
    let experiment = experiments::get(db, run.experiment_id).await?;
    let config = experiments::versions(db, run.experiment_id)
        .await?
        .into_iter()
        .find(|v| v.id == run.config_id)
        .map(|v| v.config)
        .ok_or_else(|| Error::NotFound(format!("config of run {run_id}")))?;
    let teacher = models::get(db, experiment.teacher_model_id).await?;
    let student = models::get(db, experiment.student_model_id).await?;
    Ok(RunContext { run, experiment, config, teacher, student })
}

/// Mixes seeds (splitmix64), so each question and step of a run gets its own
/// reproducible stream.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mean and population standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    (mean, var.sqrt())
}
