//! Server functions: the UI's typed calls into the server.

use leptos::prelude::*;
use rlt_types::{DatasetSummary, Page, QuestionDetail, QuestionFilter, QuestionSummary};

#[cfg(feature = "ssr")]
async fn with_backend<T, F, Fut>(call: F) -> Result<T, ServerFnError>
where
    F: FnOnce(crate::backend::SharedBackend) -> Fut,
    Fut: std::future::Future<Output = crate::backend::BackendResult<T>>,
{
    let backend = use_context::<crate::backend::SharedBackend>()
        .ok_or_else(|| ServerFnError::new("the server did not provide a backend"))?;
    call(backend).await.map_err(|e| {
        // Let the HTTP status of a server-rendered page match what went wrong.
        if let (Some(response), Ok(status)) =
            (use_context::<leptos_axum::ResponseOptions>(), http::StatusCode::from_u16(e.status))
        {
            response.set_status(status);
        }
        ServerFnError::new(e.message)
    })
}

#[server(prefix = "/ui/fn")]
pub async fn list_datasets() -> Result<Vec<DatasetSummary>, ServerFnError> {
    with_backend(|b| async move { b.list_datasets().await }).await
}

#[server(prefix = "/ui/fn")]
pub async fn get_dataset(id: i64) -> Result<DatasetSummary, ServerFnError> {
    with_backend(|b| async move { b.get_dataset(id).await }).await
}

#[server(prefix = "/ui/fn")]
pub async fn list_questions(dataset_id: i64, filter: QuestionFilter) -> Result<Page<QuestionSummary>, ServerFnError> {
    with_backend(|b| async move { b.list_questions(dataset_id, filter).await }).await
}

#[server(prefix = "/ui/fn")]
pub async fn get_question(id: i64) -> Result<QuestionDetail, ServerFnError> {
    with_backend(|b| async move { b.get_question(id).await }).await
}
