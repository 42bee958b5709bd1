use serde::{Deserialize, Serialize};

/// The RLT reward of one explanation with all its parts and the per-token
/// detail behind them. This is also one output line of `rlt score`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreResult {
    pub reward: f64,
    pub solution_logprob_mean: f64,
    pub solution_logprob_min: f64,
    pub thought_kl_mean: f64,
    pub thought_kl_max: f64,
    /// `missing_end_tag_penalty` when the completion had no end tag, else 0.
    pub match_penalty: f64,
    /// Tokens in the solution span of the student chat.
    pub solution_tokens: usize,
    /// Tokens in the thought span.
    pub thought_tokens: usize,
    /// Student log-prob of each solution token, given the explanation.
    pub solution_token_texts: Vec<String>,
    pub solution_logprobs: Vec<f64>,
    /// Per thought token: teacher and student log-probs and their difference.
    pub thought_token_texts: Vec<String>,
    pub thought_teacher_logprobs: Vec<f64>,
    pub thought_student_logprobs: Vec<f64>,
    pub thought_kl: Vec<f64>,
}

/// One stored reward of an explanation (an explanation can be scored under
/// several configs or models; each score is kept).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardRecord {
    pub id: i64,
    pub explanation_id: i64,
    pub teacher_model_id: i64,
    pub student_model_id: i64,
    pub reward_config_hash: String,
    pub job_id: Option<i64>,
    pub created_at: String,
    #[serde(flatten)]
    pub score: ScoreResult,
}

/// An explanation in a list, with its latest reward's headline numbers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExplanationSummary {
    pub id: i64,
    pub question_id: i64,
    /// `reference` (came with the data) or `teacher` (written by a run).
    pub origin: String,
    pub author: Option<String>,
    pub label: Option<String>,
    pub run_id: Option<i64>,
    pub step: Option<i32>,
    pub sample_index: Option<i32>,
    pub seed: Option<i64>,
    pub num_tokens: Option<i32>,
    pub finish_reason: Option<String>,
    pub completion: String,
    pub reward: Option<f64>,
    pub annotation_count: i64,
    pub created_at: String,
}

/// Filters of `GET /api/v1/explanations`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams), into_params(parameter_in = Query))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExplanationFilter {
    pub run_id: Option<i64>,
    pub question_id: Option<i64>,
    pub dataset_id: Option<i64>,
    /// `reference` or `teacher`.
    pub origin: Option<String>,
    /// Only explanations whose latest reward is at least this.
    pub min_reward: Option<f64>,
    pub max_reward: Option<f64>,
    /// Only explanations with (true) or without (false) reviewer annotations.
    pub has_annotation: Option<bool>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExplanationDetail {
    #[serde(flatten)]
    pub summary: ExplanationSummary,
    /// Sampling parameters of a teacher explanation.
    pub sampling: Option<serde_json::Value>,
    pub rewards: Vec<RewardRecord>,
}

/// One explanation to score: `completion` is what the teacher wrote after
/// `<|begin_of_explanation|>\n\n`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreItem {
    pub question: String,
    pub solution: String,
    pub completion: String,
}

/// Body of `POST /api/v1/score`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    pub items: Vec<ScoreItem>,
    /// Defaults to the default model (SmolLM2-135M-Instruct).
    #[serde(default)]
    pub teacher_model_id: Option<i64>,
    #[serde(default)]
    pub student_model_id: Option<i64>,
    /// Defaults to the RLT reference configuration.
    #[serde(default)]
    pub reward_config: Option<crate::RewardConfig>,
}

/// A scored item, or why it could not be scored. `rlt score` writes these,
/// one per input line, in input order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScoreOutcome {
    Scored(ScoreResult),
    Failed {
        /// 1-based input line (CLI) or item index + 1 (API).
        line: u64,
        error: String,
    },
}
