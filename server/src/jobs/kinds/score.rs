//! `score`: the RLT reward of every explanation of a run, of a set of
//! questions (reference explanations included) or of given explanations,
//! stored with its parts and per-token arrays. Scoring again with another
//! reward config or other models adds rows and keeps the earlier ones.
//!
//! Durable point: the stored rewards. A resumed job skips explanations that
//! already have a reward for this config and these models.

use rlt_engine::reward::ScoreInput;
use rlt_types::{ModelInfo, RewardConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::generate::{parse_params, record_reward_metrics};
use super::run_context;
use crate::error::{Error, Result};
use crate::experiments::config_hash_of;
use crate::explanations::{self, NewReward};
use crate::jobs::{JobContext, JobKind, PreparedJob};
use crate::models;
use crate::scoring::{self, BATCH, ScoringModels};

pub struct Score;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Score the run's teacher explanations (with the run's reward config
    /// and models unless overridden).
    #[serde(default)]
    pub run_id: Option<i64>,
    /// Score every explanation of these questions, references included.
    #[serde(default)]
    pub question_ids: Option<Vec<i64>>,
    /// Score exactly these explanations.
    #[serde(default)]
    pub explanation_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub teacher_model_id: Option<i64>,
    #[serde(default)]
    pub student_model_id: Option<i64>,
    /// Reward config to score with (default: the run's, else the reference).
    #[serde(default)]
    pub reward_config: Option<RewardConfig>,
}

#[async_trait::async_trait]
impl JobKind for Score {
    fn name(&self) -> &'static str {
        "score"
    }

    fn description(&self) -> &'static str {
        "Score explanations (of a run, of questions, or given ids) with the RLT reward and store every part"
    }

    fn params_schema(&self) -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "description": "Give exactly one of run_id, question_ids, explanation_ids",
            "properties": {
                "run_id": {"type": "integer"},
                "question_ids": {"type": "array", "items": {"type": "integer"}},
                "explanation_ids": {"type": "array", "items": {"type": "integer"}},
                "teacher_model_id": {"type": "integer"},
                "student_model_id": {"type": "integer"},
                "reward_config": {"type": "object", "description": "RewardConfig; omitted fields take the reference defaults"}
            }
        })
    }

    async fn prepare(&self, db: &PgPool, params: Value) -> Result<PreparedJob> {
        let p: Params = parse_params(params)?;
        let chosen = [p.run_id.is_some(), p.question_ids.is_some(), p.explanation_ids.is_some()];
        if chosen.iter().filter(|c| **c).count() != 1 {
            return Err(Error::invalid(
                Some("params".to_owned()),
                "give exactly one of run_id, question_ids or explanation_ids",
            ));
        }
        for (field, ids) in [("params.question_ids", &p.question_ids), ("params.explanation_ids", &p.explanation_ids)] {
            if ids.as_ref().is_some_and(|ids| ids.is_empty() || ids.len() > 100_000) {
                return Err(Error::invalid(Some(field.to_owned()), format!("{field} must hold 1 to 100000 ids")));
            }
        }
        if let Some(run_id) = p.run_id {
            run_context(db, run_id).await?;
        }
        for (field, id) in
            [("params.teacher_model_id", p.teacher_model_id), ("params.student_model_id", p.student_model_id)]
        {
            if let Some(id) = id {
                models::get(db, id)
                    .await
                    .map_err(|_| Error::invalid(Some(field.to_owned()), format!("model {id} does not exist")))?;
            }
        }
        if let Some(cfg) = &p.reward_config
            && let Some((field, message)) = cfg.problems().into_iter().next()
        {
            return Err(Error::invalid(
                Some(format!("params.reward_config.{field}")),
                format!("reward_config.{field} {message}"),
            ));
        }
        let run_id = p.run_id;
        Ok(PreparedJob { params: serde_json::to_value(&p).expect("params serialize"), run_id })
    }

    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let run = match p.run_id {
            Some(id) => Some(run_context(&ctx.db, id).await?),
            None => None,
        };
        let default_model = || models::ensure_default(&ctx.db, &ctx.data_dir);
        let pick = |id: Option<i64>, from_run: Option<&ModelInfo>| {
            let from_run = from_run.cloned();
            async move {
                match (id, from_run) {
                    (Some(id), _) => models::get(&ctx.db, id).await,
                    (None, Some(m)) => Ok(m),
                    (None, None) => default_model().await,
                }
            }
        };
        let teacher = pick(p.teacher_model_id, run.as_ref().map(|r| &r.teacher)).await?;
        let student = pick(p.student_model_id, run.as_ref().map(|r| &r.student)).await?;
        let cfg = p.reward_config.clone().or_else(|| run.as_ref().map(|r| r.config.reward.clone())).unwrap_or_default();
        let cfg_json = serde_json::to_value(&cfg)?;
        let cfg_hash = config_hash_of(&cfg);

        let todo = pending(&ctx.db, &p, teacher.id, student.id, &cfg_hash).await?;
        let total = todo.len() as i64;
        ctx.info(format!("scoring {total} explanations with teacher {} and student {}", teacher.name, student.name))
            .await?;
        let models = ScoringModels {
            teacher: teacher.path.clone().into(),
            student: student.path.clone().into(),
            device: ctx.device().to_owned(),
        };
        let mut done = 0i64;
        ctx.progress(0, Some(total), 0).await?;
        for (batch_index, batch) in todo.chunks(BATCH).enumerate() {
            ctx.check_cancelled()?;
            let items: Vec<ScoreInput> = batch.iter().map(|e| e.input.clone()).collect();
            let results = scoring::score(&models, &cfg, items).await?;
            let mut rewards = Vec::new();
            let mut penalties = 0;
            for (e, result) in batch.iter().zip(results) {
                match result {
                    Ok(score) => {
                        rewards.push(score.reward);
                        penalties += usize::from(score.match_penalty != 0.0);
                        explanations::insert_reward(
                            &ctx.db,
                            NewReward {
                                explanation_id: e.id,
                                teacher_model_id: teacher.id,
                                student_model_id: student.id,
                                reward_config: &cfg_json,
                                reward_config_hash: &cfg_hash,
                                job_id: Some(ctx.job.id),
                                score: &score,
                            },
                        )
                        .await?;
                    }
                    Err(err) => ctx.log("warn", format!("explanation {}: {err}", e.id)).await?,
                }
            }
            record_reward_metrics(ctx, "score", batch_index as i64, &rewards, penalties, batch.len()).await?;
            done += batch.len() as i64;
            ctx.progress(done, Some(total), 0).await?;
        }
        ctx.info(format!("done: {done} explanations scored")).await?;
        Ok(())
    }
}

struct Pending {
    id: i64,
    input: ScoreInput,
}

/// Explanations in scope without a reward for this config and these models.
async fn pending(db: &PgPool, p: &Params, teacher: i64, student: i64, cfg_hash: &str) -> Result<Vec<Pending>> {
    let rows = sqlx::query!(
        r#"SELECT e.id, e.origin, e.completion, q.question, q.solution
           FROM explanations e JOIN questions q ON q.id = e.question_id
           WHERE (($1::bigint IS NOT NULL AND e.run_id = $1)
                  OR ($2::bigint[] IS NOT NULL AND e.question_id = ANY($2))
                  OR ($3::bigint[] IS NOT NULL AND e.id = ANY($3)))
             AND NOT EXISTS (SELECT 1 FROM rewards r WHERE r.explanation_id = e.id AND r.reward_config_hash = $4
                             AND r.teacher_model_id = $5 AND r.student_model_id = $6)
           ORDER BY e.question_id, e.id"#,
        p.run_id,
        p.question_ids.as_deref(),
        p.explanation_ids.as_deref(),
        cfg_hash,
        teacher,
        student,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            // A reference explanation is a finished text, not an open teacher
            // turn: close it so it is not charged the missing-tag penalty.
            let completion =
                if r.origin == "reference" { format!("{}<|end_of_explanation|>", r.completion) } else { r.completion };
            Pending { id: r.id, input: ScoreInput { question: r.question, solution: r.solution, completion } }
        })
        .collect())
}
