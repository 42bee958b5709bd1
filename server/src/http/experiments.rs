//! `/api/v1/experiments`: experiments, their config versions and runs.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rlt_types::{ConfigVersion, CreateExperiment, CreateRun, ErrorBody, Experiment, NewConfigVersion, Run};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, ApiPath};
use super::{ApiContext, AppState};
use crate::error::Result;
use crate::{experiments, runs};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show))
        .routes(routes!(versions, add_version))
        .routes(routes!(experiment_runs, create_run))
}

#[utoipa::path(get, path = "/experiments", tag = "experiments", responses((status = 200, body = Vec<Experiment>)))]
async fn list(State(ctx): State<ApiContext>) -> Result<Json<Vec<Experiment>>> {
    Ok(Json(experiments::list(&ctx.db).await?))
}

/// Creates an experiment with config version 1. Omitted config fields take
/// the RLT reference defaults.
#[utoipa::path(post, path = "/experiments", tag = "experiments", request_body = CreateExperiment,
    responses((status = 201, body = Experiment), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn create(
    State(ctx): State<ApiContext>,
    ApiJson(req): ApiJson<CreateExperiment>,
) -> Result<(StatusCode, Json<Experiment>)> {
    Ok((StatusCode::CREATED, Json(experiments::create(&ctx.db, req).await?)))
}

#[utoipa::path(get, path = "/experiments/{id}", tag = "experiments", params(("id" = i64, Path)),
    responses((status = 200, body = Experiment), (status = 404, body = ErrorBody)))]
async fn show(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<Experiment>> {
    Ok(Json(experiments::get(&ctx.db, id).await?))
}

/// Every config version, oldest first, with how many runs used each.
#[utoipa::path(get, path = "/experiments/{id}/configs", tag = "experiments", params(("id" = i64, Path)),
    responses((status = 200, body = Vec<ConfigVersion>), (status = 404, body = ErrorBody)))]
async fn versions(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<Vec<ConfigVersion>>> {
    experiments::get(&ctx.db, id).await?;
    Ok(Json(experiments::versions(&ctx.db, id).await?))
}

/// Edits the config by adding the next version; versions are never changed
/// in place, so runs keep exactly the config they used.
#[utoipa::path(post, path = "/experiments/{id}/configs", tag = "experiments", params(("id" = i64, Path)),
    request_body = NewConfigVersion,
    responses((status = 201, body = ConfigVersion), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn add_version(
    State(ctx): State<ApiContext>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<NewConfigVersion>,
) -> Result<(StatusCode, Json<ConfigVersion>)> {
    Ok((StatusCode::CREATED, Json(experiments::add_version(&ctx.db, id, req.config).await?)))
}

#[utoipa::path(get, path = "/experiments/{id}/runs", tag = "experiments", params(("id" = i64, Path)),
    responses((status = 200, body = Vec<Run>), (status = 404, body = ErrorBody)))]
async fn experiment_runs(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<Vec<Run>>> {
    experiments::get(&ctx.db, id).await?;
    Ok(Json(runs::list(&ctx.db, Some(id)).await?))
}

/// Starts a run at a config version (the newest by default), recording the
/// config hash, seed, model hashes and code version.
#[utoipa::path(post, path = "/experiments/{id}/runs", tag = "experiments", params(("id" = i64, Path)),
    request_body = CreateRun,
    responses((status = 201, body = Run), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_run(
    State(ctx): State<ApiContext>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<CreateRun>,
) -> Result<(StatusCode, Json<Run>)> {
    Ok((StatusCode::CREATED, Json(runs::create(&ctx.db, id, req).await?)))
}
