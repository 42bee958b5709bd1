//! `/api/v1/questions/{id}`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use rlt_types::QuestionDetail;

use super::extract::ApiPath;
use super::{ApiContext, AppState};
use crate::error::Result;
use crate::questions;

pub fn router() -> Router<AppState> {
    Router::new().route("/questions/{id}", get(show))
}

async fn show(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<QuestionDetail>> {
    Ok(Json(questions::get(&ctx.db, id).await?))
}
