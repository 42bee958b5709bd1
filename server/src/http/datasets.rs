//! `/api/v1/datasets`: list, get, import, and the questions of a dataset.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use axum::routing::get;
use rlt_types::{DatasetSummary, ImportDatasetRequest, Page, QuestionFilter, QuestionSummary};
use serde::Deserialize;
use serde_json::json;

use super::extract::{ApiPath, ApiQuery, parse_json, parse_value};
use super::{ApiContext, AppState};
use crate::error::{Error, Result};
use crate::{datasets, import, questions};

/// Uploads above this are refused before parsing.
const MAX_UPLOAD_BYTES: usize = 256 * 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/datasets", get(list).post(create).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)))
        .route("/datasets/{id}", get(show))
        .route("/datasets/{id}/questions", get(list_questions))
}

async fn list(State(ctx): State<ApiContext>) -> Result<Json<Vec<DatasetSummary>>> {
    Ok(Json(datasets::list(&ctx.db).await?))
}

async fn show(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<DatasetSummary>> {
    Ok(Json(datasets::get(&ctx.db, id).await?))
}

#[derive(Deserialize)]
struct RawUploadQuery {
    name: Option<String>,
    description: Option<String>,
}

/// Imports a dataset, either from a JSON [`ImportDatasetRequest`] or from a
/// raw JSONL body (`application/x-ndjson`, `application/jsonl`) named by `?name=`.
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
        return Err(Error::BadRequest {
            field: None,
            message: "send JSON (application/json) or a JSONL file (application/x-ndjson)".to_owned(),
        });
    };
    Ok((StatusCode::CREATED, Json(summary)))
}

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
