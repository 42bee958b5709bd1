//! The OpenAPI document at `/api/v1/openapi.json` and an interactive docs
//! page at `/api/v1/docs` (Swagger UI, vendored from npm into `static/`).

use axum::Json;
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use utoipa::openapi::OpenApi;

use super::AppState;

pub fn base() -> OpenApi {
    use utoipa::openapi::{InfoBuilder, OpenApiBuilder};
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("RLT Studio API")
                .version("1")
                .description(Some(
                    "Datasets, experiments, runs, jobs, explanations, rewards and metrics of RLT Studio. \
                     Errors are `{\"error\": {\"code\", \"message\", \"field\", \"line\"}}` with a 4xx status \
                     naming what was wrong.",
                ))
                .build(),
        )
        .build()
}

pub fn router(openapi: OpenApi) -> Router<AppState> {
    let doc = std::sync::Arc::new(finish(openapi));
    Router::new()
        .route("/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
        .route("/docs", get(|| async { Html(DOCS_PAGE) }))
}

const DOCS_PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>RLT Studio API</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">
</head>
<body>
  <div id="docs"><p style="font-family: sans-serif; padding: 1rem">
    Loading the API docs… If this stays, the Swagger UI assets are missing: run <code>make assets</code>.
    The raw document is at <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.</p></div>
  <script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
  <script>
    window.onload = () => { window.ui = SwaggerUIBundle({ url: "/api/v1/openapi.json", dom_id: "#docs" }); };
  </script>
</body>
</html>
"##;

/// Adds what is true of every operation but tedious to annotate on each: any
/// of them can answer 400 with an error body (malformed path, query or
/// body). The import variants also get their `source` tag as an allowed
/// property, which the generated `oneOf` would otherwise forbid.
fn finish(openapi: OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(openapi).expect("the OpenAPI document serializes");
    let bad_request = serde_json::json!({
        "description": "The path, query or body is malformed; `field` names the culprit.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            for method in ["get", "post", "put", "patch", "delete"] {
                if let Some(responses) = item.get_mut(method).and_then(|op| op["responses"].as_object_mut()) {
                    responses.entry("400").or_insert_with(|| bad_request.clone());
                }
            }
        }
    }
    for (schema, tag) in [("ChampImport", "champ"), ("JsonlImport", "jsonl"), ("SyntheticImport", "synthetic")] {
        let variant = &mut doc["components"]["schemas"][schema];
        if let Some(props) = variant["properties"].as_object_mut() {
            props.insert("source".to_owned(), serde_json::json!({"type": "string", "enum": [tag]}));
        }
        match variant["required"].as_array_mut() {
            Some(required) => required.push("source".into()),
            None => variant["required"] = serde_json::json!(["source"]),
        }
    }
    doc
}
