//! The Leptos pages, server-rendered, with the server's implementation of
//! the UI backend.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use frontend::backend::{Backend, BackendError, BackendResult, SharedBackend};
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{LeptosRoutes, generate_route_list};
use rlt_types::{
    ConfigVersion, CreateRun, ExperimentView, Job, JobView, OverviewView, QuestionBrowse, QuestionBrowseView,
    QuestionView, Run, RunView, SubmitJob,
};
use sqlx::PgPool;

use crate::error::Error;
use crate::http::AppState;
use crate::jobs::{Registry, queue, submit};
use crate::{experiments, runs, views};

pub fn leptos_options(static_dir: &Path) -> LeptosOptions {
    LeptosOptions::builder()
        .output_name("frontend")
        .site_root(static_dir.display().to_string())
        .site_pkg_dir("pkg")
        .build()
}

/// Page routes and the server-function endpoint, with the backend in context.
pub fn router(state: &AppState) -> Router<AppState> {
    let backend: SharedBackend = Arc::new(DbBackend { db: state.api.db.clone(), registry: state.api.registry.clone() });
    // Hydrate only when the wasm bundle was built; pages read fine without it.
    let hydrate = Path::new(state.leptos_options.site_root.as_ref()).join("pkg/frontend.js").exists();
    let options = state.leptos_options.clone();
    let routes = generate_route_list(frontend::App);
    let context_backend = backend.clone();
    let fallback_backend = backend.clone();
    let fallback_options = options.clone();
    let fn_backend = backend;
    Router::new()
        .leptos_routes_with_context(
            state,
            routes,
            move || provide_context(context_backend.clone()),
            move || frontend::shell(options.clone(), hydrate),
        )
        .route(
            "/ui/fn/{*fn_name}",
            axum::routing::post(move |req: axum::extract::Request| {
                let backend = fn_backend.clone();
                async move {
                    leptos_axum::handle_server_fns_with_context(move || provide_context(backend.clone()), req).await
                }
            }),
        )
        // Static files under the site root (the wasm bundle in pkg/), else the
        // app's own "not found" page with a 404.
        .fallback(leptos_axum::file_and_error_handler_with_context::<AppState, _>(
            move || provide_context(fallback_backend.clone()),
            move |_| frontend::shell(fallback_options.clone(), hydrate),
        ))
}

struct DbBackend {
    db: PgPool,
    registry: Arc<Registry>,
}

fn to_backend_error(e: Error) -> BackendError {
    let status = e.status_code().as_u16();
    let body = e.to_body().error;
    BackendError { status, message: body.message, field: body.field }
}

#[async_trait::async_trait]
impl Backend for DbBackend {
    async fn overview(&self) -> BackendResult<OverviewView> {
        views::overview(&self.db).await.map_err(to_backend_error)
    }

    async fn experiment(&self, id: i64) -> BackendResult<ExperimentView> {
        views::experiment(&self.db, &self.registry, id).await.map_err(to_backend_error)
    }

    async fn job(&self, id: i64) -> BackendResult<JobView> {
        views::job(&self.db, id).await.map_err(to_backend_error)
    }

    async fn run(&self, id: i64, overlay: Vec<i64>) -> BackendResult<RunView> {
        views::run(&self.db, id, &overlay).await.map_err(to_backend_error)
    }

    async fn browse(&self, dataset_id: i64, filter: QuestionBrowse) -> BackendResult<QuestionBrowseView> {
        views::browse(&self.db, dataset_id, &filter).await.map_err(to_backend_error)
    }

    async fn question(&self, id: i64, cols: Vec<String>) -> BackendResult<QuestionView> {
        views::question(&self.db, id, &cols).await.map_err(to_backend_error)
    }

    async fn submit_job(&self, job: SubmitJob) -> BackendResult<Job> {
        submit::submit(&self.db, &self.registry, job).await.map_err(to_backend_error)
    }

    async fn create_run(&self, experiment_id: i64, run: CreateRun) -> BackendResult<Run> {
        runs::create(&self.db, experiment_id, run).await.map_err(to_backend_error)
    }

    async fn add_config_version(&self, experiment_id: i64, config_json: String) -> BackendResult<ConfigVersion> {
        let config = crate::http::parse_config(&config_json).map_err(to_backend_error)?;
        experiments::add_version(&self.db, experiment_id, config).await.map_err(to_backend_error)
    }

    async fn cancel_job(&self, id: i64) -> BackendResult<Job> {
        queue::request_cancel(&self.db, id).await.map_err(to_backend_error)
    }

    async fn retry_job(&self, id: i64) -> BackendResult<Job> {
        queue::retry(&self.db, id).await.map_err(to_backend_error)
    }
}
