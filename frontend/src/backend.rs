//! What the UI needs from the server, implemented by the server crate and
//! provided to server functions as Leptos context.

use std::sync::Arc;

use rlt_types::{DatasetSummary, Page, QuestionDetail, QuestionFilter, QuestionSummary};

/// A failed backend call, already phrased for a person reading the page.
#[derive(Clone, Debug)]
pub struct BackendError {
    pub status: u16,
    pub message: String,
}

pub type BackendResult<T> = Result<T, BackendError>;

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn list_datasets(&self) -> BackendResult<Vec<DatasetSummary>>;
    async fn get_dataset(&self, id: i64) -> BackendResult<DatasetSummary>;
    async fn list_questions(&self, dataset_id: i64, filter: QuestionFilter) -> BackendResult<Page<QuestionSummary>>;
    async fn get_question(&self, id: i64) -> BackendResult<QuestionDetail>;
}

pub type SharedBackend = Arc<dyn Backend>;
