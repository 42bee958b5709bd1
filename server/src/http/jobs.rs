//! `/api/v1/jobs`: submit, list, inspect, cancel, retry, logs and a live
//! event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use rlt_types::{ErrorBody, Job, JobKindInfo, JobLog, JobStatus, Page, SubmitJob};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{ApiContext, AppState};
use crate::error::{Error, Result};
use crate::jobs::events::Event;
use crate::jobs::{queue, submit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(kinds))
        .routes(routes!(list, create))
        .routes(routes!(show))
        .routes(routes!(cancel))
        .routes(routes!(retry))
        .routes(routes!(logs))
        .routes(routes!(events))
}

/// The job kinds this server offers, with a JSON Schema of each one's params.
#[utoipa::path(get, path = "/job-kinds", tag = "jobs", responses((status = 200, body = Vec<JobKindInfo>)))]
async fn kinds(State(ctx): State<ApiContext>) -> Json<Vec<JobKindInfo>> {
    Json(ctx.registry.describe())
}

/// Queues a job. Its params are checked now, so a queued job never fails on
/// its input.
#[utoipa::path(post, path = "/jobs", tag = "jobs", request_body = SubmitJob,
    responses((status = 201, body = Job), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn create(State(ctx): State<ApiContext>, ApiJson(req): ApiJson<SubmitJob>) -> Result<(StatusCode, Json<Job>)> {
    Ok((StatusCode::CREATED, Json(submit::submit(&ctx.db, &ctx.registry, req).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct JobQuery {
    status: Option<JobStatus>,
    kind: Option<String>,
    run_id: Option<i64>,
    /// From a previous page's `next_cursor`.
    cursor: Option<String>,
    /// 1 to 500, default 50.
    limit: Option<i64>,
}

/// Jobs, newest first, with cursor paging.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(JobQuery),
    responses((status = 200, body = Page<Job>), (status = 400, body = ErrorBody)))]
async fn list(State(ctx): State<ApiContext>, ApiQuery(q): ApiQuery<JobQuery>) -> Result<Json<Page<Job>>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Error::bad_request("limit", "limit must be between 1 and 500"));
    }
    let before = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| Error::bad_request("cursor", "cursor is not one this API returned"))?,
        ),
    };
    let filter = queue::JobFilter { status: q.status, kind: q.kind, run_id: q.run_id, before, limit };
    Ok(Json(queue::list(&ctx.db, &filter).await?))
}

#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn show(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<Job>> {
    Ok(Json(queue::get(&ctx.db, id).await?))
}

/// Cancels a queued job at once; a running one stops within seconds.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<Job>> {
    Ok(Json(queue::request_cancel(&ctx.db, id).await?))
}

/// Queues a failed or cancelled job again; it resumes from its last durable point.
#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retry(State(ctx): State<ApiContext>, ApiPath(id): ApiPath<i64>) -> Result<Json<Job>> {
    Ok(Json(queue::retry(&ctx.db, id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogQuery {
    /// Only lines with a larger id.
    after: Option<i64>,
    /// 1 to 1000, default 200.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/jobs/{id}/logs", tag = "jobs", params(("id" = i64, Path), LogQuery),
    responses((status = 200, body = Vec<JobLog>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn logs(
    State(ctx): State<ApiContext>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<Vec<JobLog>>> {
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(Error::bad_request("limit", "limit must be between 1 and 1000"));
    }
    queue::get(&ctx.db, id).await?;
    Ok(Json(queue::logs(&ctx.db, id, q.after.unwrap_or(0), limit).await?))
}

/// Server-Sent Events for one job: `job` events (the Job JSON: status,
/// progress, ETA) whenever it changes, `log` events (JobLog JSON) for each
/// line, and a final `end` event once the job is finished.
#[utoipa::path(get, path = "/jobs/{id}/events", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, description = "text/event-stream of `job`, `log` and `end` events"),
              (status = 404, body = ErrorBody)))]
async fn events(
    State(ctx): State<ApiContext>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>> {
    // Subscribe before the first read, so no change falls in between.
    let mut rx = ctx.events.subscribe();
    let first = queue::get(&ctx.db, id).await?;
    let db = ctx.db.clone();
    let stream = async_stream::stream! {
        let mut last_log = 0i64;
        let mut job = first;
        loop {
            yield Ok(job_event(&job));
            if let Ok(lines) = queue::logs(&db, id, last_log, 1000).await {
                for line in &lines {
                    last_log = line.id;
                    yield Ok(SseEvent::default().event("log").id(line.id.to_string()).json_data(line).expect("logs serialize"));
                }
            }
            if job.status.is_final() {
                yield Ok(SseEvent::default().event("end").data(job.status.as_str()));
                break;
            }
            // Wait for a change to this job; re-read on a timer too, in case a
            // notification was lost with a dropped connection.
            let changed = async {
                loop {
                    match rx.recv().await {
                        Ok(Event::Job { job_id, .. } | Event::Log { job_id, .. }) if job_id == id => return true,
                        Ok(_) => continue,
                        Err(RecvError::Lagged(_)) => return true,
                        Err(RecvError::Closed) => return false,
                    }
                }
            };
            if let Ok(false) = tokio::time::timeout(Duration::from_secs(5), changed).await {
                break;
            }
            match queue::get(&db, id).await {
                Ok(j) => job = j,
                Err(_) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn job_event(job: &Job) -> SseEvent {
    SseEvent::default().event("job").json_data(job).expect("jobs serialize")
}
