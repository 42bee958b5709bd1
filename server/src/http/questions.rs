//! `/api/v1/questions/{id}`.

use axum::Json;
use axum::extract::State;
use rlt_types::{ErrorBody, QuestionDetail};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiPath;
use super::{ApiContext, AppState};
use crate::error::Result;
use crate::questions;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show))
}

/// A question with its solution, answer and reference explanations.
#[utoipa::path(get, path = "/questions/{id}", tag = "datasets", params(("id" = i64, Path)),
    responses((status = 200, body = QuestionDetail), (status = 404, body = ErrorBody)))]
async fn show(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<QuestionDetail>> {
    Ok(Json(questions::get(&ctx.db, id).await?))
}
