//! What the UI needs from the server, implemented by the server crate and
//! provided to server functions as Leptos context.

use std::sync::Arc;

use rlt_types::{
    ConfigVersion, CreateRun, ExperimentView, Job, JobView, OverviewView, QuestionBrowse, QuestionBrowseView,
    QuestionView, Run, RunView, SubmitJob,
};

/// A failed backend call, already phrased for a person reading the page.
#[derive(Clone, Debug)]
pub struct BackendError {
    pub status: u16,
    pub message: String,
    /// The form field the error is about, if any.
    pub field: Option<String>,
}

pub type BackendResult<T> = Result<T, BackendError>;

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn overview(&self) -> BackendResult<OverviewView>;
    async fn experiment(&self, id: i64) -> BackendResult<ExperimentView>;
    async fn job(&self, id: i64) -> BackendResult<JobView>;
    async fn run(&self, id: i64, overlay: Vec<i64>) -> BackendResult<RunView>;
    async fn browse(&self, dataset_id: i64, filter: QuestionBrowse) -> BackendResult<QuestionBrowseView>;
    async fn question(&self, id: i64, cols: Vec<String>) -> BackendResult<QuestionView>;
    async fn submit_job(&self, job: SubmitJob) -> BackendResult<Job>;
    async fn create_run(&self, experiment_id: i64, run: CreateRun) -> BackendResult<Run>;
    async fn add_config_version(&self, experiment_id: i64, config_json: String) -> BackendResult<ConfigVersion>;
    async fn cancel_job(&self, id: i64) -> BackendResult<Job>;
    async fn retry_job(&self, id: i64) -> BackendResult<Job>;
}

pub type SharedBackend = Arc<dyn Backend>;
