//! `generate`: sample N teacher explanations per question with the RLT
//! teacher prompt, store each with its seed and sampling parameters, and
//! score them right away when the experiment asks for it.
//!
//! Durable point: the stored explanations themselves. A resumed job skips
//! questions whose samples are all stored; a question cut off half-way is
//! sampled again with the same seeds, and the unique index keeps the
//! samples already written.

use std::time::Instant;

use anyhow::Context;

use rlt_engine::generate::{FinishReason, GenerateParams, generate};
use rlt_engine::load::WeightMode;
use rlt_engine::reward::{ScoreInput, teacher_prompt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::{RunContext, mean_std, mix_seed, run_context};
use crate::error::{Error, Result};
use crate::experiments::config_hash_of;
use crate::explanations::{self, NewReward, NewTeacherExplanation};
use crate::jobs::{JobContext, JobKind, PreparedJob};
use crate::model_cache;
use crate::scoring::{self, ScoringModels};

pub struct Generate;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub run_id: i64,
    /// Questions to explain; by default the experiment's questions.
    #[serde(default)]
    pub question_ids: Option<Vec<i64>>,
    /// Only the first `limit` of them.
    #[serde(default)]
    pub limit: Option<usize>,
    /// The training step of the policy that writes (0 = the initial teacher).
    #[serde(default)]
    pub step: i32,
}

#[async_trait::async_trait]
impl JobKind for Generate {
    fn name(&self) -> &'static str {
        "generate"
    }

    fn description(&self) -> &'static str {
        "Sample N teacher explanations per question of a run (N = sampling.num_samples), scoring them if the config says so"
    }

    fn params_schema(&self) -> Value {
        json!({
            "type": "object",
            "required": ["run_id"],
            "additionalProperties": false,
            "properties": {
                "run_id": {"type": "integer", "description": "The run to generate for"},
                "question_ids": {"type": "array", "items": {"type": "integer"}, "description": "Default: the experiment's questions"},
                "limit": {"type": "integer", "minimum": 1, "description": "Only the first N questions"},
                "step": {"type": "integer", "minimum": 0, "default": 0, "description": "Training step of the policy"}
            }
        })
    }

    async fn prepare(&self, db: &PgPool, params: Value) -> Result<PreparedJob> {
        let mut p: Params = parse_params(params)?;
        let ctx = run_context(db, p.run_id).await?;
        if p.step < 0 {
            return Err(Error::invalid(Some("params.step".to_owned()), "step must be >= 0"));
        }
        if p.limit == Some(0) {
            return Err(Error::invalid(Some("params.limit".to_owned()), "limit must be at least 1"));
        }
        let ids = resolve_questions(db, &ctx, p.question_ids.as_deref()).await?;
        let ids: Vec<i64> = ids.into_iter().take(p.limit.unwrap_or(usize::MAX)).collect();
        p.question_ids = Some(ids);
        Ok(PreparedJob { params: serde_json::to_value(&p).expect("params serialize"), run_id: Some(p.run_id) })
    }

    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()> {
        let p: Params = ctx.params()?;
        let run = run_context(&ctx.db, p.run_id).await?;
        let question_ids = p.question_ids.clone().unwrap_or_default();
        let total = question_ids.len() as i64;
        let sampling = &run.config.sampling;
        let n = sampling.num_samples as usize;
        let sampling_json = serde_json::to_value(sampling)?;
        ctx.info(format!(
            "generating {n} explanations for each of {total} questions with {} (seed {}, step {})",
            run.teacher.name, run.run.seed, p.step
        ))
        .await?;

        let teacher_path = std::path::PathBuf::from(&run.teacher.path);
        let device = ctx.device().to_owned();
        let teacher = {
            let (path, device) = (teacher_path.clone(), device.clone());
            crate::priority::spawn_model_work(move || model_cache::shared().get(&path, WeightMode::Quantized, &device))
                .await?
                .with_context(|| format!("loading the teacher {}", run.teacher.path))?
        };
        let template = teacher.chat_template()?.clone();
        let scoring = ScoringModels { teacher: teacher_path, student: run.student.path.clone().into(), device };
        let reward_json = serde_json::to_value(&run.config.reward)?;
        let reward_hash = config_hash_of(&run.config.reward);

        let done_at_start = count_done(&ctx.db, p.run_id, p.step, &question_ids, n).await?;
        let mut done = done_at_start;
        ctx.progress(done, Some(total), done_at_start).await?;
        for (position, &question_id) in question_ids.iter().enumerate() {
            ctx.check_cancelled()?;
            if stored_samples(&ctx.db, p.run_id, question_id, p.step).await? >= n as i64 {
                continue;
            }
            let q = crate::questions::get(&ctx.db, question_id).await?;
            let seed = mix_seed(run.run.seed as u64, question_id as u64, p.step as u64);
            let prompt = teacher_prompt(&template, &run.config.reward, &q.question, &q.solution)?;
            let params = GenerateParams {
                n,
                max_new_tokens: sampling.max_new_tokens as usize,
                temperature: sampling.temperature,
                top_p: sampling.top_p,
                seed,
                stop: vec![run.config.reward.tags.end_explanation.clone()],
                include_stop_str: true,
                cancel: Some(ctx.cancel_flag()),
                ..GenerateParams::default()
            };
            let started = Instant::now();
            let completions = {
                let (teacher, params) = (teacher.clone(), params.clone());
                crate::priority::spawn_model_work(move || {
                    let ids = teacher.tokenizer.encode(&prompt)?;
                    generate(&teacher.model, &teacher.tokenizer, &[ids], &params, |_| {})
                })
                .await??
            };
            ctx.check_cancelled()?;
            let seconds = started.elapsed().as_secs_f64();
            let mut ids = Vec::with_capacity(completions.len());
            for c in &completions {
                let id = explanations::insert_teacher(
                    &ctx.db,
                    NewTeacherExplanation {
                        question_id,
                        run_id: p.run_id,
                        job_id: ctx.job.id,
                        step: p.step,
                        sample_index: c.sample_index as i32,
                        seed: seed as i64,
                        sampling: &sampling_json,
                        completion: &c.text,
                        finish_reason: finish_reason(c.finish_reason),
                        num_tokens: c.token_ids.len() as i32,
                    },
                )
                .await?;
                ids.push(id);
            }
            let step = position as i64;
            let lengths: Vec<f64> = completions.iter().map(|c| c.token_ids.len() as f64).collect();
            let tokens: f64 = lengths.iter().sum();
            let clipped = completions.iter().filter(|c| c.finish_reason == FinishReason::Length).count();
            ctx.metric("generate/completion_tokens_mean", step, mean_std(&lengths).0).await?;
            ctx.metric("generate/tokens_per_s", step, tokens / seconds.max(1e-9)).await?;
            ctx.metric("generate/clipped_rate", step, clipped as f64 / n as f64).await?;

            if run.config.score_after_generate {
                let items: Vec<ScoreInput> = completions
                    .iter()
                    .map(|c| ScoreInput {
                        question: q.question.clone(),
                        solution: q.solution.clone(),
                        completion: c.text.clone(),
                    })
                    .collect();
                let results = scoring::score(&scoring, &run.config.reward, items).await?;
                let mut rewards = Vec::new();
                let mut penalties = 0;
                for (id, result) in ids.iter().zip(results) {
                    match result {
                        Ok(score) => {
                            rewards.push(score.reward);
                            penalties += usize::from(score.match_penalty != 0.0);
                            explanations::insert_reward(
                                &ctx.db,
                                NewReward {
                                    explanation_id: *id,
                                    teacher_model_id: run.teacher.id,
                                    student_model_id: run.student.id,
                                    reward_config: &reward_json,
                                    reward_config_hash: &reward_hash,
                                    job_id: Some(ctx.job.id),
                                    score: &score,
                                },
                            )
                            .await?;
                        }
                        Err(e) => {
                            ctx.log("warn", format!("question {question_id}: explanation {id} not scored: {e}")).await?
                        }
                    }
                }
                record_reward_metrics(ctx, "generate", step, &rewards, penalties, n).await?;
            }
            done += 1;
            ctx.progress(done, Some(total), done_at_start).await?;
        }
        ctx.info(format!("done: {total} questions")).await?;
        Ok(())
    }
}

/// Reward statistics of one group, with the alarms the dashboard marks:
/// a zero-variance group gives GRPO no signal, NaN means something broke.
pub async fn record_reward_metrics(
    ctx: &JobContext,
    prefix: &str,
    step: i64,
    rewards: &[f64],
    penalties: usize,
    group: usize,
) -> Result<()> {
    if rewards.is_empty() {
        return Ok(());
    }
    let (mean, std) = mean_std(rewards);
    let min = rewards.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    ctx.metric(&format!("{prefix}/reward_mean"), step, mean).await?;
    ctx.metric(&format!("{prefix}/reward_std"), step, std).await?;
    ctx.metric(&format!("{prefix}/reward_min"), step, min).await?;
    ctx.metric(&format!("{prefix}/reward_max"), step, max).await?;
    ctx.metric(&format!("{prefix}/match_penalty_rate"), step, penalties as f64 / group.max(1) as f64).await?;
    if rewards.len() > 1 && std == 0.0 {
        ctx.metric("alarm/zero_variance_group", step, 1.0).await?;
    }
    if rewards.iter().any(|r| !r.is_finite()) {
        ctx.metric("alarm/nan_reward", step, 1.0).await?;
    }
    Ok(())
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::EndOfText => "end_of_text",
        FinishReason::StopString => "stop",
        FinishReason::Length => "length",
    }
}

pub fn parse_params<T: serde::de::DeserializeOwned>(params: Value) -> Result<T> {
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let field = match inner.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            Some(name) => format!("params.{name}"),
            None if path == "." => "params".to_owned(),
            None => format!("params.{path}"),
        };
        Error::invalid(Some(field.clone()), format!("{field}: {inner}"))
    })
}

/// The questions a job covers, checked to belong to the experiment's dataset.
pub async fn resolve_questions(db: &PgPool, ctx: &RunContext, requested: Option<&[i64]>) -> Result<Vec<i64>> {
    let dataset_id = ctx.experiment.dataset_id;
    match requested.or(ctx.experiment.question_ids.as_deref()) {
        Some(ids) => {
            if ids.is_empty() {
                return Err(Error::invalid(Some("params.question_ids".to_owned()), "question_ids must not be empty"));
            }
            let found: Vec<i64> =
                sqlx::query_scalar!("SELECT id FROM questions WHERE dataset_id = $1 AND id = ANY($2)", dataset_id, ids)
                    .fetch_all(db)
                    .await?;
            if let Some(missing) = ids.iter().find(|id| !found.contains(id)) {
                return Err(Error::invalid(
                    Some("params.question_ids".to_owned()),
                    format!("question {missing} is not in the experiment's dataset {dataset_id}"),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            Ok(ids.iter().copied().filter(|id| seen.insert(*id)).collect())
        }
        None => Ok(sqlx::query_scalar!("SELECT id FROM questions WHERE dataset_id = $1 ORDER BY ordinal", dataset_id)
            .fetch_all(db)
            .await?),
    }
}

async fn stored_samples(db: &PgPool, run_id: i64, question_id: i64, step: i32) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM explanations
           WHERE origin = 'teacher' AND run_id = $1 AND question_id = $2 AND step = $3"#,
        run_id,
        question_id,
        step
    )
    .fetch_one(db)
    .await?)
}

/// Questions whose samples are all stored already.
async fn count_done(db: &PgPool, run_id: i64, step: i32, question_ids: &[i64], n: usize) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM (
               SELECT question_id FROM explanations
               WHERE origin = 'teacher' AND run_id = $1 AND step = $2 AND question_id = ANY($3)
               GROUP BY question_id HAVING count(*) >= $4) done"#,
        run_id,
        step,
        question_ids,
        n as i64
    )
    .fetch_one(db)
    .await?)
}
