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
    let doc = std::sync::Arc::new(openapi);
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
