//! The HTTP server: one `router()` per resource module, merged here, the
//! OpenAPI document generated from the handlers, and the Leptos pages.

mod datasets;
mod docs;
mod experiments;
mod explanations;
mod extract;
mod health;
mod jobs;
mod models;
mod questions;
mod report;
mod runs;
mod score;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::FromRef;
use leptos::config::LeptosOptions;
use sqlx::PgPool;
use tower_http::compression::CompressionLayer;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

pub use extract::ApiJson;

/// An experiment config from JSON text, with errors naming the field.
pub fn parse_config(text: &str) -> crate::error::Result<rlt_types::ExperimentConfig> {
    extract::parse_json(text.as_bytes())
}

use crate::jobs::Registry;
use crate::jobs::events::EventHub;

/// Shared state of every handler.
#[derive(Clone)]
pub struct ApiContext {
    pub db: PgPool,
    pub config: Arc<HttpConfig>,
    pub registry: Arc<Registry>,
    pub events: EventHub,
}

#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub data_dir: PathBuf,
    pub static_dir: PathBuf,
}

/// Axum state: the API context plus what Leptos needs.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub api: ApiContext,
    pub leptos_options: LeptosOptions,
}

/// The REST API and its OpenAPI document, built from the same handlers.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut openapi) = OpenApiRouter::with_openapi(docs::base())
        .merge(datasets::router())
        .merge(questions::router())
        .merge(models::router())
        .merge(experiments::router())
        .merge(explanations::router())
        .merge(runs::router())
        .merge(jobs::router())
        .merge(score::router())
        .split_for_parts();
    openapi.servers = Some(vec![utoipa::openapi::Server::new("/api/v1")]);
    (router, openapi)
}

pub fn router(api_ctx: ApiContext) -> Router {
    let static_dir = api_ctx.config.static_dir.clone();
    let leptos_options = crate::ui::leptos_options(&static_dir);
    let state = AppState { api: api_ctx, leptos_options };
    let (api_routes, openapi) = api();
    let api_routes = api_routes
        .merge(docs::router(openapi))
        .fallback(|| async { crate::error::Error::NotFound("API endpoint".to_owned()) })
        .method_not_allowed_fallback(|| async { crate::error::Error::MethodNotAllowed });
    Router::new()
        .merge(health::router())
        .merge(report::router())
        .nest("/api/v1", api_routes)
        .nest_service("/static", ServeDir::new(&static_dir).precompressed_gzip())
        .merge(crate::ui::router(&state))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    api: ApiContext,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    on_listening(listener.local_addr()?);
    axum::serve(listener, router(api)).with_graceful_shutdown(shutdown).await.context("HTTP server failed")
}
