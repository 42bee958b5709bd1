//! `/api/v1/models`: the model registry.

use axum::Json;
use axum::extract::State;
use rlt_types::{ErrorBody, ModelInfo};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::ApiPath;
use super::{ApiContext, AppState};
use crate::error::Result;
use crate::models;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(show))
}

/// Registered models with their content hashes.
#[utoipa::path(get, path = "/models", tag = "models", responses((status = 200, body = Vec<ModelInfo>)))]
async fn list(State(ctx): State<ApiContext>) -> Result<Json<Vec<ModelInfo>>> {
    Ok(Json(models::list(&ctx.db).await?))
}

#[utoipa::path(get, path = "/models/{id}", tag = "models", params(("id" = i64, Path)),
    responses((status = 200, body = ModelInfo), (status = 404, body = ErrorBody)))]
async fn show(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<ModelInfo>> {
    Ok(Json(models::get(&ctx.db, id).await?))
}
