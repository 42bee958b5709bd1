use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }

    /// No further change happens without a manual retry.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// Which workers may claim a job.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRequirement {
    #[default]
    Any,
    Cpu,
    Cuda,
}

impl DeviceRequirement {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRequirement::Any => "any",
            DeviceRequirement::Cpu => "cpu",
            DeviceRequirement::Cuda => "cuda",
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub status: JobStatus,
    pub run_id: Option<i64>,
    pub params: Value,
    pub device: String,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    pub progress_done: i64,
    pub progress_total: Option<i64>,
    /// Estimated seconds until done, from the rate of progress so far.
    pub eta_seconds: Option<f64>,
    pub cancel_requested: bool,
    pub worker_id: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// When a failed attempt will be retried, if it will.
    pub run_after: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobLog {
    pub id: i64,
    pub ts: String,
    pub level: String,
    pub message: String,
}

/// Body of `POST /api/v1/jobs`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// A job kind the server offers (`GET /api/v1/job-kinds`).
    pub kind: String,
    /// Kind-specific parameters.
    #[serde(default)]
    pub params: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceRequirement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
}

/// A job kind with a description of its parameters, so UIs can build forms
/// for kinds they do not know.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobKindInfo {
    pub name: String,
    pub description: String,
    /// JSON Schema of `params`.
    pub params_schema: Value,
}
