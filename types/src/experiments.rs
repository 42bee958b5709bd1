use serde::{Deserialize, Serialize};

use crate::ExperimentConfig;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: i64,
    pub name: String,
    /// `gguf` or `hf`.
    pub format: String,
    pub path: String,
    pub sha256: String,
    pub architecture: String,
    pub created_at: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub teacher_model_id: i64,
    pub student_model_id: i64,
    pub dataset_id: i64,
    /// A subset of the dataset's questions; absent means all of them.
    pub question_ids: Option<Vec<i64>>,
    /// The newest config version.
    pub version: i32,
    pub config: ExperimentConfig,
    pub config_hash: String,
    pub created_at: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigVersion {
    pub id: i64,
    pub version: i32,
    pub config: ExperimentConfig,
    pub config_hash: String,
    pub created_at: String,
    /// Runs that used this version; a used version can never change.
    pub run_count: i64,
}

/// Body of `POST /api/v1/experiments`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateExperiment {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub teacher_model_id: i64,
    pub student_model_id: i64,
    pub dataset_id: i64,
    #[serde(default)]
    pub question_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub config: ExperimentConfig,
}

/// Body of `POST /api/v1/experiments/{id}/configs`: the next version.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConfigVersion {
    pub config: ExperimentConfig,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: i64,
    pub experiment_id: i64,
    pub experiment_name: String,
    pub config_id: i64,
    pub config_version: i32,
    pub name: String,
    pub status: String,
    pub seed: i64,
    pub config_hash: String,
    pub teacher_sha256: String,
    pub student_sha256: String,
    /// Git commit of the code that created the run.
    pub code_version: String,
    pub created_at: String,
}

/// Body of `POST /api/v1/experiments/{id}/runs`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    #[serde(default)]
    pub name: Option<String>,
    /// Defaults to a random seed, recorded on the run.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Defaults to the newest version.
    #[serde(default)]
    pub config_version: Option<i32>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub name: String,
    pub step: i64,
    /// `null` when the value was NaN or infinite (JSON has no NaN).
    pub value: Option<f64>,
    pub ts: String,
}
