//! `/api/v1/explanations`: teacher and reference explanations with their
//! rewards, filterable by run, question, dataset, reward range and
//! annotation.

use axum::Json;
use axum::extract::State;
use rlt_types::{ErrorBody, ExplanationDetail, ExplanationFilter, ExplanationSummary, Page, RewardRecord};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiPath, ApiQuery};
use super::{ApiContext, AppState};
use crate::error::Result;
use crate::explanations;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(show)).routes(routes!(rewards))
}

/// Explanations in id order with cursor paging; `reward` is the latest score.
#[utoipa::path(get, path = "/explanations", tag = "explanations", params(ExplanationFilter),
    responses((status = 200, body = Page<ExplanationSummary>), (status = 400, body = ErrorBody)))]
async fn list(
    State(ctx): State<ApiContext>,
    ApiQuery(filter): ApiQuery<ExplanationFilter>,
) -> Result<Json<Page<ExplanationSummary>>> {
    Ok(Json(explanations::list(&ctx.db, &filter).await?))
}

/// One explanation with every reward it received and their per-token arrays.
#[utoipa::path(get, path = "/explanations/{id}", tag = "explanations", params(("id" = i64, Path)),
    responses((status = 200, body = ExplanationDetail), (status = 404, body = ErrorBody)))]
async fn show(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<ExplanationDetail>> {
    Ok(Json(explanations::get(&ctx.db, id).await?))
}

/// Every reward of one explanation (one per reward config and model pair),
/// oldest first, with the per-token arrays.
#[utoipa::path(get, path = "/explanations/{id}/rewards", tag = "explanations", params(("id" = i64, Path)),
    responses((status = 200, body = Vec<RewardRecord>), (status = 404, body = ErrorBody)))]
async fn rewards(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<Vec<RewardRecord>>> {
    explanations::get(&ctx.db, id).await?;
    Ok(Json(explanations::rewards_of(&ctx.db, &[id]).await?))
}
