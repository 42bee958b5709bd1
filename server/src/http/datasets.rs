//! `/api/v1/datasets`: list, get, import, and the questions of a dataset.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use rlt_types::{DatasetSummary, ErrorBody, ImportDatasetRequest, Page, QuestionFilter, QuestionSummary};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiPath, ApiQuery, parse_json, parse_value};
use super::{ApiContext, AppState};
use crate::error::{Error, Result};
use crate::{datasets, import, questions};

/// Uploads above this are refused before parsing.
const MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
        .routes(routes!(show))
        .routes(routes!(list_questions))
}

/// Datasets with their question and reference-explanation counts.
#[utoipa::path(get, path = "/datasets", tag = "datasets", responses((status = 200, body = Vec<DatasetSummary>)))]
async fn list(State(ctx): State<ApiContext>) -> Result<Json<Vec<DatasetSummary>>> {
    Ok(Json(datasets::list(&ctx.db).await?))
}

#[utoipa::path(get, path = "/datasets/{id}", tag = "datasets", params(("id" = i64, Path)),
    responses((status = 200, body = DatasetSummary), (status = 404, body = ErrorBody)))]
async fn show(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<DatasetSummary>> {
    Ok(Json(datasets::get(&ctx.db, id).await?))
}

#[derive(Deserialize, IntoParams)]
struct RawUploadQuery {
    /// Dataset name, for a raw JSONL body.
    name: Option<String>,
    description: Option<String>,
}

/// Imports a dataset in one transaction: a JSON [`ImportDatasetRequest`], or
/// a raw JSONL body (`application/x-ndjson`) named by `?name=`. A bad line
/// imports nothing and is reported with its line number and field.
#[utoipa::path(post, path = "/datasets", tag = "datasets", params(RawUploadQuery),
    request_body(content(
        (ImportDatasetRequest = "application/json"),
        (String = "application/x-ndjson"),
    )),
    responses((status = 201, body = DatasetSummary), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    State(ctx): State<ApiContext>,
    ApiQuery(query): ApiQuery<RawUploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<DatasetSummary>)> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let summary = if content_type.starts_with("application/json") {
        let request = parse_import_request(&body)?;
        import::run(&ctx.db, &ctx.config.data_dir, request).await?
    } else if ["application/x-ndjson", "application/jsonl", "application/jsonlines", "text/plain"]
        .iter()
        .any(|t| content_type.starts_with(t))
    {
        let name =
            query.name.ok_or_else(|| Error::bad_request("name", "a JSONL upload needs ?name= for the dataset"))?;
        let dataset = import::from_jsonl(
            body.to_vec(),
            name,
            query.description.unwrap_or_default(),
            json!({ "uploaded_bytes": body.len() }),
        )
        .await?;
        import::store(&ctx.db, dataset).await?
    } else {
        return Err(Error::bad_request(None, "send JSON (application/json) or a JSONL file (application/x-ndjson)"));
    };
    Ok((StatusCode::CREATED, Json(summary)))
}

/// Questions of a dataset in order, with search and cursor paging.
#[utoipa::path(get, path = "/datasets/{id}/questions", tag = "datasets",
    params(("id" = i64, Path), QuestionFilter),
    responses((status = 200, body = Page<QuestionSummary>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_questions(
    State(ctx): State<ApiContext>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(filter): ApiQuery<QuestionFilter>,
) -> Result<Json<Page<QuestionSummary>>> {
    Ok(Json(questions::list(&ctx.db, id, &filter).await?))
}

/// Reads the `source` tag first, then the variant's fields, so errors name the
/// exact field (serde loses the path inside internally tagged enums).
fn parse_import_request(body: &[u8]) -> Result<ImportDatasetRequest> {
    let mut value: serde_json::Value = parse_json(body)?;
    let sources = ImportDatasetRequest::SOURCES.join(", ");
    let Some(object) = value.as_object_mut() else {
        return Err(Error::bad_request(None, "expected a JSON object"));
    };
    let source = match object.remove("source") {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(Error::bad_request("source", format!("`source` must be one of: {sources}"))),
        None => return Err(Error::bad_request("source", format!("missing field `source` (one of: {sources})"))),
    };
    Ok(match source.as_str() {
        "champ" => ImportDatasetRequest::Champ(parse_value(value)?),
        "jsonl" => ImportDatasetRequest::Jsonl(parse_value(value)?),
        "synthetic" => ImportDatasetRequest::Synthetic(parse_value(value)?),
        other => {
            return Err(Error::bad_request("source", format!("unknown source `{other}`; expected one of: {sources}")));
        }
    })
}
