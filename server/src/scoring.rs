//! Scoring explanations with the RLT reward: the one path behind
//! `rlt score`, `POST /api/v1/score` and score jobs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rlt_engine::load::WeightMode;
use rlt_engine::reward::{RewardModels, ScoreInput, score_batch};
use rlt_types::{RewardConfig, ScoreResult};

use crate::error::{Error, Result};
use crate::model_cache;

/// Items scored per batched forward pass: large enough to amortise the
/// pass, small enough to report progress often.
pub const BATCH: usize = 8;

/// Teacher and student weights to score with (they may be the same file).
#[derive(Clone, Debug)]
pub struct ScoringModels {
    pub teacher: PathBuf,
    pub student: PathBuf,
    pub device: String,
}

/// Scores items off the async runtime. The outer error is for problems
/// with the models themselves; each item has its own result.
pub async fn score(
    models: &ScoringModels,
    cfg: &RewardConfig,
    items: Vec<ScoreInput>,
) -> Result<Vec<std::result::Result<ScoreResult, String>>> {
    let (models, cfg) = (models.clone(), cfg.clone());
    crate::priority::spawn_model_work(move || score_blocking(&models, &cfg, &items))
        .await
        .map_err(|e| Error::Internal(e.into()))?
}

/// The same, for callers already on a blocking thread.
pub fn score_blocking(
    models: &ScoringModels,
    cfg: &RewardConfig,
    items: &[ScoreInput],
) -> Result<Vec<std::result::Result<ScoreResult, String>>> {
    let teacher = load(&models.teacher, &models.device)?;
    let student =
        if models.student == models.teacher { teacher.clone() } else { load(&models.student, &models.device)? };
    let pair = RewardModels { teacher: &teacher, student: &student };
    pair.check_compatible().map_err(|e| Error::invalid(Some("student_model_id".to_owned()), e.to_string()))?;
    Ok(score_batch(&pair, cfg, items).into_iter().map(|r| r.map_err(|e| e.to_string())).collect())
}

fn load(path: &Path, device: &str) -> Result<Arc<rlt_engine::load::LoadedModel>> {
    // Exact scoring needs f32 weights and an f32 cache (an f16 cache alone
    // moves solution_logprob_min by about 1e-2).
    model_cache::shared()
        .get(path, WeightMode::F32, device)
        .map_err(|e| Error::invalid(Some("model".to_owned()), format!("cannot load {}: {e}", path.display())))
}
