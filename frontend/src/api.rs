//! Server functions: the UI's typed calls into the server, at fixed
//! endpoints (`/ui/fn/<name>`) so the browser bundle and the server agree
//! wherever each was built (the default names hash the source path). Errors
//! carry the field they are about as `field: message`, so forms can show
//! them next to the input.

use leptos::prelude::*;
// Loaders take JSON: URL encoding drops empty lists and all-default
// structs, which then fail to deserialize. Form actions stay URL-encoded so
// they also work as plain HTML forms.
use leptos::server_fn::codec::Json;
use rlt_types::{
    ConfigVersion, ExperimentView, Job, JobView, OverviewView, QuestionBrowse, QuestionBrowseView, QuestionView, Run,
    RunView,
};
#[cfg(feature = "ssr")]
use rlt_types::{CreateRun, SubmitJob};

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
        ServerFnError::new(match e.field {
            Some(field) => format!("{field}: {}", e.message),
            None => e.message,
        })
    })
}

#[server(prefix = "/ui/fn", input = Json, endpoint = "load_overview")]
pub async fn load_overview() -> Result<OverviewView, ServerFnError> {
    with_backend(|b| async move { b.overview().await }).await
}

#[server(prefix = "/ui/fn", input = Json, endpoint = "load_experiment")]
pub async fn load_experiment(id: i64) -> Result<ExperimentView, ServerFnError> {
    with_backend(|b| async move { b.experiment(id).await }).await
}

#[server(prefix = "/ui/fn", input = Json, endpoint = "load_job")]
pub async fn load_job(id: i64) -> Result<JobView, ServerFnError> {
    with_backend(|b| async move { b.job(id).await }).await
}

#[server(prefix = "/ui/fn", input = Json, endpoint = "load_run")]
pub async fn load_run(id: i64, overlay: Vec<i64>) -> Result<RunView, ServerFnError> {
    with_backend(|b| async move { b.run(id, overlay).await }).await
}

#[server(prefix = "/ui/fn", input = Json, endpoint = "load_questions")]
pub async fn load_questions(dataset_id: i64, filter: QuestionBrowse) -> Result<QuestionBrowseView, ServerFnError> {
    with_backend(|b| async move { b.browse(dataset_id, filter).await }).await
}

#[server(prefix = "/ui/fn", input = Json, endpoint = "load_question")]
pub async fn load_question(id: i64, cols: Vec<String>) -> Result<QuestionView, ServerFnError> {
    with_backend(|b| async move { b.question(id, cols).await }).await
}

/// Queues a job of `kind` with `params` (a JSON object as text). Plain
/// strings, so the form also works as an HTML form without JavaScript.
#[server(prefix = "/ui/fn", endpoint = "queue_job")]
pub async fn queue_job(kind: String, params: String) -> Result<Job, ServerFnError> {
    let params: serde_json::Value =
        serde_json::from_str(&params).map_err(|e| ServerFnError::new(format!("params: not valid JSON ({e})")))?;
    with_backend(|b| async move {
        b.submit_job(SubmitJob { kind, params, device: None, priority: None, max_attempts: None }).await
    })
    .await
}

/// Starts a run at the newest config version; an empty seed picks one.
#[server(prefix = "/ui/fn", endpoint = "start_run")]
pub async fn start_run(experiment_id: i64, name: String, seed: String) -> Result<Run, ServerFnError> {
    let seed = match seed.trim() {
        "" => None,
        s => Some(s.parse::<i64>().map_err(|_| ServerFnError::new("seed: must be a whole number"))?),
    };
    let name = Some(name).filter(|n| !n.trim().is_empty());
    with_backend(|b| async move { b.create_run(experiment_id, CreateRun { name, seed, config_version: None }).await })
        .await
}

/// Saves an edited config as the next version.
#[server(prefix = "/ui/fn", endpoint = "save_config")]
pub async fn save_config(experiment_id: i64, config: String) -> Result<ConfigVersion, ServerFnError> {
    with_backend(|b| async move { b.add_config_version(experiment_id, config).await }).await
}

#[server(prefix = "/ui/fn", endpoint = "cancel_job")]
pub async fn cancel_job(id: i64) -> Result<Job, ServerFnError> {
    with_backend(|b| async move { b.cancel_job(id).await }).await
}

#[server(prefix = "/ui/fn", endpoint = "retry_job")]
pub async fn retry_job(id: i64) -> Result<Job, ServerFnError> {
    with_backend(|b| async move { b.retry_job(id).await }).await
}
