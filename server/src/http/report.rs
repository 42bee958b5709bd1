//! `GET /runs/{id}/report`: the run report as one downloadable HTML file.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::extract::ApiPath;
use super::{ApiContext, AppState};
use crate::error::Result;
use crate::report;

pub fn router() -> Router<AppState> {
    Router::new().route("/runs/{id}/report", get(show))
}

async fn show(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<impl IntoResponse> {
    let html = report::render(&ctx.db, id).await?;
    let disposition = format!("inline; filename=\"rlt-run-{id}-report.html\"");
    Ok((
        [(header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        html,
    ))
}
