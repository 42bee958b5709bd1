//! `/api/v1/runs`: runs, their metrics, and a live metric stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use rlt_types::{ErrorBody, MetricPoint, Run};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiPath, ApiQuery};
use super::{ApiContext, AppState};
use crate::error::Result;
use crate::jobs::events::Event;
use crate::runs;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(metrics))
        .routes(routes!(metric_stream))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RunFilter {
    experiment_id: Option<i64>,
}

#[utoipa::path(get, path = "/runs", tag = "runs", params(RunFilter), responses((status = 200, body = Vec<Run>)))]
async fn list(State(ctx): State<ApiContext>, ApiQuery(filter): ApiQuery<RunFilter>) -> Result<Json<Vec<Run>>> {
    Ok(Json(runs::list(&ctx.db, filter.experiment_id).await?))
}

#[utoipa::path(get, path = "/runs/{id}", tag = "runs", params(("id" = i64, Path)),
    responses((status = 200, body = Run), (status = 404, body = ErrorBody)))]
async fn show(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<Run>> {
    Ok(Json(runs::get(&ctx.db, id).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct MetricFilter {
    /// Only this metric.
    name: Option<String>,
}

/// Every recorded metric point of a run, in step order per metric.
#[utoipa::path(get, path = "/runs/{id}/metrics", tag = "runs", params(("id" = i64, Path), MetricFilter),
    responses((status = 200, body = Vec<MetricPoint>), (status = 404, body = ErrorBody)))]
async fn metrics(
    State(ctx): State<ApiContext>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(filter): ApiQuery<MetricFilter>,
) -> Result<Json<Vec<MetricPoint>>> {
    Ok(Json(runs::metrics(&ctx.db, id, filter.name.as_deref()).await?))
}

/// Server-Sent Events: first every stored point (`point` events), then each
/// new point as it is recorded, on any worker.
#[utoipa::path(get, path = "/runs/{id}/metrics/stream", tag = "runs", params(("id" = i64, Path)),
    responses((status = 200, description = "text/event-stream of `point` events carrying MetricPoint JSON"),
              (status = 404, body = ErrorBody)))]
async fn metric_stream(
    State(ctx): State<ApiContext>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>> {
    // Subscribe before reading the stored points, so none falls in between.
    let mut rx = ctx.events.subscribe();
    let stored = runs::metrics(&ctx.db, id, None).await?;
    let db = ctx.db.clone();
    let stream = async_stream::stream! {
        for point in &stored {
            yield Ok(point_event(point));
        }
        loop {
            match rx.recv().await {
                Ok(Event::Metric { run_id, name, step, value }) if run_id == id => {
                    let point = MetricPoint { name, step, value: Some(value), ts: chrono::Utc::now().to_rfc3339() };
                    yield Ok(point_event(&point));
                }
                Ok(_) => {}
                // Fell behind: send the full series again; clients key points by (name, step).
                Err(RecvError::Lagged(_)) => {
                    if let Ok(all) = runs::metrics(&db, id, None).await {
                        for point in &all {
                            yield Ok(point_event(point));
                        }
                    }
                }
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn point_event(point: &MetricPoint) -> SseEvent {
    SseEvent::default().event("point").json_data(point).expect("metric points serialize")
}
