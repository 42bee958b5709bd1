//! Explanations (teacher output and reference traces) and their rewards:
//! reads with filters, and the idempotent writes generate and score jobs use.

use rlt_types::{ExplanationDetail, ExplanationFilter, ExplanationSummary, Page, RewardRecord, ScoreResult};
use serde_json::Value;
use sqlx::PgPool;

use crate::error::{Error, Result};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

struct SummaryRow {
    id: i64,
    question_id: i64,
    origin: String,
    author: Option<String>,
    label: Option<String>,
    run_id: Option<i64>,
    step: Option<i32>,
    sample_index: Option<i32>,
    seed: Option<i64>,
    num_tokens: Option<i32>,
    finish_reason: Option<String>,
    completion: String,
    reward: Option<f64>,
    annotation_count: Option<i64>,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<SummaryRow> for ExplanationSummary {
    fn from(r: SummaryRow) -> Self {
        ExplanationSummary {
            id: r.id,
            question_id: r.question_id,
            origin: r.origin,
            author: r.author,
            label: r.label,
            run_id: r.run_id,
            step: r.step,
            sample_index: r.sample_index,
            seed: r.seed,
            num_tokens: r.num_tokens,
            finish_reason: r.finish_reason,
            completion: r.completion,
            reward: r.reward,
            annotation_count: r.annotation_count.unwrap_or(0),
            created_at: r.created_at.to_rfc3339(),
        }
    }
}

pub async fn list(pool: &PgPool, f: &ExplanationFilter) -> Result<Page<ExplanationSummary>> {
    let limit = match f.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => return Err(Error::bad_request("limit", format!("limit must be between 1 and {MAX_LIMIT}"))),
    };
    let after: i64 = match f.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c
            .parse()
            .ok()
            .filter(|n: &i64| *n > 0)
            .ok_or_else(|| Error::bad_request("cursor", "cursor is not one this API returned"))?,
    };
    if let Some(origin) = &f.origin
        && !["reference", "teacher"].contains(&origin.as_str())
    {
        return Err(Error::bad_request("origin", "origin must be `reference` or `teacher`"));
    }
    for (name, v) in [("min_reward", f.min_reward), ("max_reward", f.max_reward)] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(Error::bad_request(name, format!("{name} must be a finite number")));
        }
    }
    let mut rows = sqlx::query_as!(
        SummaryRow,
        r#"SELECT e.id, e.question_id, e.origin, e.author, e.label, e.run_id, e.step, e.sample_index, e.seed,
                  e.num_tokens, e.finish_reason, e.completion, e.created_at, r.reward AS "reward?",
                  (SELECT count(*) FROM annotations a WHERE a.explanation_id = e.id) AS annotation_count
           FROM explanations e
           JOIN questions q ON q.id = e.question_id
           LEFT JOIN LATERAL (SELECT reward FROM rewards WHERE explanation_id = e.id ORDER BY id DESC LIMIT 1) r ON true
           WHERE e.id > $1
             AND ($2::bigint IS NULL OR e.run_id = $2)
             AND ($3::bigint IS NULL OR e.question_id = $3)
             AND ($4::bigint IS NULL OR q.dataset_id = $4)
             AND ($5::text IS NULL OR e.origin = $5)
             AND ($6::float8 IS NULL OR r.reward >= $6)
             AND ($7::float8 IS NULL OR r.reward <= $7)
             AND ($8::bool IS NULL OR EXISTS (SELECT 1 FROM annotations a WHERE a.explanation_id = e.id) = $8)
           ORDER BY e.id
           LIMIT $9"#,
        after,
        f.run_id,
        f.question_id,
        f.dataset_id,
        f.origin,
        f.min_reward,
        f.max_reward,
        f.has_annotation,
        i64::from(limit) + 1,
    )
    .fetch_all(pool)
    .await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(Page { items: rows.into_iter().map(Into::into).collect(), next_cursor })
}

pub async fn get(pool: &PgPool, id: i64) -> Result<ExplanationDetail> {
    let row = sqlx::query!(
        r#"SELECT e.id, e.question_id, e.origin, e.author, e.label, e.run_id, e.step, e.sample_index, e.seed,
                  e.num_tokens, e.finish_reason, e.completion, e.created_at, e.sampling,
                  (SELECT count(*) FROM annotations a WHERE a.explanation_id = e.id) AS "annotation_count!"
           FROM explanations e WHERE e.id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| Error::NotFound(format!("explanation {id}")))?;
    let rewards = rewards_of(pool, &[id]).await?;
    let summary = ExplanationSummary {
        id: row.id,
        question_id: row.question_id,
        origin: row.origin,
        author: row.author,
        label: row.label,
        run_id: row.run_id,
        step: row.step,
        sample_index: row.sample_index,
        seed: row.seed,
        num_tokens: row.num_tokens,
        finish_reason: row.finish_reason,
        completion: row.completion,
        reward: rewards.last().map(|r| r.score.reward),
        annotation_count: row.annotation_count,
        created_at: row.created_at.to_rfc3339(),
    };
    Ok(ExplanationDetail { summary, sampling: row.sampling, rewards })
}

/// Every reward of these explanations, oldest first.
pub async fn rewards_of(pool: &PgPool, explanation_ids: &[i64]) -> Result<Vec<RewardRecord>> {
    // Straight from the JSON bytes into the arrays: a page of long
    // explanations decodes tens of thousands of numbers here.
    let rows = sqlx::query!(
        r#"SELECT id, explanation_id, teacher_model_id, student_model_id, reward_config_hash, job_id, created_at,
                reward, solution_logprob_mean, solution_logprob_min, thought_kl_mean, thought_kl_max, match_penalty,
                solution_tokens, thought_tokens, tokens AS "tokens: sqlx::types::Json<TokenArrays>"
         FROM rewards WHERE explanation_id = ANY($1) ORDER BY id"#,
        explanation_ids
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let detail = r.tokens.0;
            Ok(RewardRecord {
                id: r.id,
                explanation_id: r.explanation_id,
                teacher_model_id: r.teacher_model_id,
                student_model_id: r.student_model_id,
                reward_config_hash: r.reward_config_hash,
                job_id: r.job_id,
                created_at: r.created_at.to_rfc3339(),
                score: ScoreResult {
                    reward: r.reward,
                    solution_logprob_mean: r.solution_logprob_mean,
                    solution_logprob_min: r.solution_logprob_min,
                    thought_kl_mean: r.thought_kl_mean,
                    thought_kl_max: r.thought_kl_max,
                    match_penalty: r.match_penalty,
                    solution_tokens: r.solution_tokens as usize,
                    thought_tokens: r.thought_tokens as usize,
                    solution_token_texts: detail.solution_token_texts,
                    solution_logprobs: detail.solution_logprobs,
                    thought_token_texts: detail.thought_token_texts,
                    thought_teacher_logprobs: detail.thought_teacher_logprobs,
                    thought_student_logprobs: detail.thought_student_logprobs,
                    thought_kl: detail.thought_kl,
                },
            })
        })
        .collect()
}

/// The per-token part of a [`ScoreResult`], as stored in `rewards.tokens`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct TokenArrays {
    solution_token_texts: Vec<String>,
    solution_logprobs: Vec<f64>,
    thought_token_texts: Vec<String>,
    thought_teacher_logprobs: Vec<f64>,
    thought_student_logprobs: Vec<f64>,
    thought_kl: Vec<f64>,
}

/// A teacher completion to store.
pub struct NewTeacherExplanation<'a> {
    pub question_id: i64,
    pub run_id: i64,
    pub job_id: i64,
    pub step: i32,
    pub sample_index: i32,
    pub seed: i64,
    pub sampling: &'a Value,
    pub completion: &'a str,
    pub finish_reason: &'a str,
    pub num_tokens: i32,
}

/// Stores a teacher completion once: a retried job writing the same
/// (run, question, step, sample) keeps the first row. Returns its id.
pub async fn insert_teacher(pool: &PgPool, e: NewTeacherExplanation<'_>) -> Result<i64> {
    let inserted = sqlx::query_scalar!(
        "INSERT INTO explanations (question_id, origin, run_id, job_id, step, sample_index, seed, sampling,
                                   completion, finish_reason, num_tokens)
         VALUES ($1, 'teacher', $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (run_id, question_id, step, sample_index) WHERE origin = 'teacher' DO NOTHING
         RETURNING id",
        e.question_id,
        e.run_id,
        e.job_id,
        e.step,
        e.sample_index,
        e.seed,
        e.sampling,
        e.completion,
        e.finish_reason,
        e.num_tokens,
    )
    .fetch_optional(pool)
    .await?;
    match inserted {
        Some(id) => Ok(id),
        None => Ok(sqlx::query_scalar!(
            "SELECT id FROM explanations WHERE origin = 'teacher' AND run_id = $1 AND question_id = $2
               AND step = $3 AND sample_index = $4",
            e.run_id,
            e.question_id,
            e.step,
            e.sample_index
        )
        .fetch_one(pool)
        .await?),
    }
}

pub struct NewReward<'a> {
    pub explanation_id: i64,
    pub teacher_model_id: i64,
    pub student_model_id: i64,
    pub reward_config: &'a Value,
    pub reward_config_hash: &'a str,
    pub job_id: Option<i64>,
    pub score: &'a ScoreResult,
}

/// Stores a reward once per (explanation, config, teacher, student):
/// re-scoring with the same setup is a no-op, another setup adds a row.
pub async fn insert_reward(pool: &PgPool, r: NewReward<'_>) -> Result<()> {
    let s = r.score;
    let tokens = serde_json::to_value(TokenArrays {
        solution_token_texts: s.solution_token_texts.clone(),
        solution_logprobs: s.solution_logprobs.clone(),
        thought_token_texts: s.thought_token_texts.clone(),
        thought_teacher_logprobs: s.thought_teacher_logprobs.clone(),
        thought_student_logprobs: s.thought_student_logprobs.clone(),
        thought_kl: s.thought_kl.clone(),
    })
    .map_err(|e| Error::Internal(e.into()))?;
    sqlx::query!(
        "INSERT INTO rewards (explanation_id, teacher_model_id, student_model_id, reward_config, reward_config_hash,
                              job_id, reward, solution_logprob_mean, solution_logprob_min, thought_kl_mean,
                              thought_kl_max, match_penalty, solution_tokens, thought_tokens, tokens)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (explanation_id, reward_config_hash, teacher_model_id, student_model_id) DO NOTHING",
        r.explanation_id,
        r.teacher_model_id,
        r.student_model_id,
        r.reward_config,
        r.reward_config_hash,
        r.job_id,
        s.reward,
        s.solution_logprob_mean,
        s.solution_logprob_min,
        s.thought_kl_mean,
        s.thought_kl_max,
        s.match_penalty,
        s.solution_tokens as i32,
        s.thought_tokens as i32,
        tokens,
    )
    .execute(pool)
    .await?;
    Ok(())
}
