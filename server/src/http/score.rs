//! `POST /api/v1/score`: the RLT reward of a few explanations, synchronously.

use std::sync::OnceLock;

use axum::Json;
use axum::extract::State;
use rlt_engine::reward::ScoreInput;
use rlt_types::{ErrorBody, ScoreOutcome, ScoreRequest};
use tokio::sync::Semaphore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiJson;
use super::{ApiContext, AppState};
use crate::error::{Error, Result};
use crate::models;
use crate::scoring::{self, ScoringModels};

/// Larger sets go through score jobs.
pub const MAX_ITEMS: usize = 16;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(score))
}

/// Scores up to 16 explanations and returns, per item, the reward with its
/// parts and per-token arrays (the same JSON as `rlt score`), or the item's
/// error. Larger sets: submit a `score` job.
#[utoipa::path(post, path = "/score", tag = "rewards", request_body = ScoreRequest,
    responses((status = 200, body = Vec<ScoreOutcome>), (status = 422, body = ErrorBody)))]
async fn score(State(ctx): State<ApiContext>, ApiJson(req): ApiJson<ScoreRequest>) -> Result<Json<Vec<ScoreOutcome>>> {
    if req.items.is_empty() || req.items.len() > MAX_ITEMS {
        return Err(Error::invalid(
            Some("items".to_owned()),
            format!("send 1 to {MAX_ITEMS} items; submit a score job for more"),
        ));
    }
    for (i, item) in req.items.iter().enumerate() {
        for (field, text) in [("question", &item.question), ("solution", &item.solution)] {
            if text.trim().is_empty() {
                return Err(Error::invalid(
                    Some(format!("items[{i}].{field}")),
                    format!("items[{i}].{field} must not be empty"),
                ));
            }
        }
    }
    let cfg = req.reward_config.unwrap_or_default();
    if let Some((field, message)) = cfg.problems().into_iter().next() {
        return Err(Error::invalid(Some(format!("reward_config.{field}")), format!("reward_config.{field} {message}")));
    }
    let default = models::ensure_default(&ctx.db, &ctx.config.data_dir).await.map_err(|e| e.to_string());
    let pick = |id: Option<i64>, field: &'static str| {
        let (db, default) = (&ctx.db, &default);
        async move {
            match id {
                Some(id) => models::get(db, id)
                    .await
                    .map_err(|_| Error::invalid(Some(field.to_owned()), format!("model {id} does not exist"))),
                None => default.clone().map_err(|e| Error::invalid(Some(field.to_owned()), e)),
            }
        }
    };
    let teacher = pick(req.teacher_model_id, "teacher_model_id").await?;
    let student = pick(req.student_model_id, "student_model_id").await?;
    let models = ScoringModels { teacher: teacher.path.into(), student: student.path.into(), device: "cpu".to_owned() };
    let items: Vec<ScoreInput> = req
        .items
        .into_iter()
        .map(|i| ScoreInput { question: i.question, solution: i.solution, completion: i.completion })
        .collect();
    // One synchronous scoring at a time: the CPU is shared with the workers
    // and other requests must stay fast.
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    let _permit = PERMITS.get_or_init(|| Semaphore::new(1)).acquire().await.map_err(|e| Error::Internal(e.into()))?;
    let results = scoring::score(&models, &cfg, items).await?;
    Ok(Json(
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Ok(score) => ScoreOutcome::Scored(score),
                Err(error) => ScoreOutcome::Failed { line: i as u64 + 1, error },
            })
            .collect(),
    ))
}
