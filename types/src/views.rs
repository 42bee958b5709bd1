//! What each dashboard page shows, fetched in one call per page.

use serde::{Deserialize, Serialize};

use crate::{
    ConfigVersion, DatasetSummary, Experiment, ExplanationSummary, Job, JobKindInfo, JobLog, MetricPoint, ModelInfo,
    QuestionDetail, RewardRecord, Run,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunCard {
    pub run: Run,
    /// Mean reward per step of the run's latest reward metric, for a sparkline.
    pub reward_trend: Vec<(i64, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverviewView {
    pub datasets: Vec<DatasetSummary>,
    pub experiments: Vec<Experiment>,
    pub recent_runs: Vec<RunCard>,
    /// Queued and running jobs.
    pub active_jobs: Vec<Job>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentView {
    pub experiment: Experiment,
    pub dataset: DatasetSummary,
    pub teacher: ModelInfo,
    pub student: ModelInfo,
    pub versions: Vec<ConfigVersion>,
    pub runs: Vec<Run>,
    pub job_kinds: Vec<JobKindInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub job: Job,
    pub logs: Vec<JobLog>,
    pub run: Option<Run>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub id: i64,
    pub step: i32,
    pub uri: String,
    pub sha256: String,
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub run: Run,
    pub metrics: Vec<MetricPoint>,
    pub checkpoints: Vec<CheckpointInfo>,
    pub jobs: Vec<Job>,
    /// Other runs of any experiment, to overlay on the charts.
    pub other_runs: Vec<Run>,
    /// Metric points of the overlaid runs, keyed by run id.
    pub overlays: Vec<(Run, Vec<MetricPoint>)>,
    pub dataset_id: i64,
}

/// Filters and sort of the question browser (all in the URL).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuestionBrowse {
    pub q: Option<String>,
    /// `yes` or `no`: only questions with (without) explanations.
    pub has_explanations: Option<String>,
    /// Reward range, on run A's mean reward (or any explanation's without runs).
    pub min_reward: Option<f64>,
    pub max_reward: Option<f64>,
    /// Compare two runs (each optionally at a step: `3` or `3@32`).
    pub run_a: Option<String>,
    pub run_b: Option<String>,
    /// `order` (default), `reward_a`, `reward_b`, `diff` (B − A), `-diff`.
    pub sort: Option<String>,
    pub page: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuestionRow {
    pub id: i64,
    pub ordinal: i32,
    pub source_key: Option<String>,
    pub category: Option<String>,
    pub question: String,
    pub explanation_count: i64,
    /// Mean latest reward of the question's explanations in run A / B.
    pub reward_a: Option<f64>,
    pub reward_b: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuestionBrowseView {
    pub dataset: DatasetSummary,
    pub rows: Vec<QuestionRow>,
    pub total: i64,
    pub page: u32,
    pub page_size: u32,
    /// Runs of experiments on this dataset, for the comparison pickers.
    pub runs: Vec<Run>,
}

/// One explanation source of a question: a reference trace, or a run's
/// samples at a training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceOption {
    /// `ref:<explanation id>` or `run:<run id>@<step>`.
    pub key: String,
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub key: String,
    pub title: String,
    pub explanation: Option<ExplanationSummary>,
    /// The latest reward, with its per-token arrays.
    pub reward: Option<RewardRecord>,
    /// For run sources: the steps with explanations of this question, and the
    /// samples at the shown step.
    pub run_id: Option<i64>,
    pub steps: Vec<i32>,
    pub step: Option<i32>,
    pub samples: Vec<ExplanationSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuestionView {
    pub question: QuestionDetail,
    pub sources: Vec<SourceOption>,
    pub columns: Vec<Column>,
}
