//! The job queue in Postgres. Workers claim with `FOR UPDATE SKIP LOCKED`, so
//! two workers never get the same job, and hold a lease they renew with
//! heartbeats; a job whose lease ran out is claimed again by someone else.
//!
//! Written by hand rather than with a queue crate (apalis, sqlxmq, underway)
//! because the product needs things those keep in their own schemas or do
//! not offer: claiming by device, progress and ETA, per-job logs and run
//! metrics in our tables, cooperative cancel, and resume state owned by the
//! job kind. Each of those is a column here and a line of SQL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rlt_types::{Job, JobLog, JobStatus, Page};
use serde_json::Value;
use sqlx::PgPool;

use super::events::{self, Event};
use crate::error::{Error, Result};

/// Most log lines kept per job; a runaway job cannot fill the database.
pub const MAX_LOG_LINES: i64 = 10_000;

/// What a worker gets when it claims a job.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub run_id: Option<i64>,
    pub params: Value,
    pub resume_state: Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub progress_done: i64,
}

pub struct NewJob<'a> {
    pub kind: &'a str,
    pub params: &'a Value,
    pub run_id: Option<i64>,
    pub device: &'a str,
    pub priority: i32,
    pub max_attempts: i32,
}

pub async fn submit(pool: &PgPool, job: NewJob<'_>) -> Result<Job> {
    let mut tx = pool.begin().await?;
    let id = sqlx::query_scalar!(
        "INSERT INTO jobs (kind, params, run_id, device, priority, max_attempts)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        job.kind,
        job.params,
        job.run_id,
        job.device,
        job.priority,
        job.max_attempts,
    )
    .fetch_one(&mut *tx)
    .await?;
    events::notify(&mut *tx, &Event::Job { job_id: id, run_id: job.run_id }).await?;
    tx.commit().await?;
    get(pool, id).await
}

/// Claims the next job this worker may run, or `None`. Expired leases of
/// jobs with attempts left count as free.
pub async fn claim(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
    devices: &[String],
    kinds: &[String],
) -> Result<Option<ClaimedJob>> {
    let job = sqlx::query_as!(
        ClaimedJob,
        r#"WITH next AS (
               SELECT id FROM jobs
               WHERE kind = ANY($3) AND device = ANY($4) AND NOT cancel_requested
                 AND ((status = 'queued' AND run_after <= now())
                      OR (status = 'running' AND lease_until < now() AND attempts < max_attempts))
               ORDER BY priority DESC, id
               LIMIT 1
               FOR UPDATE SKIP LOCKED
           )
           UPDATE jobs j
           SET status = 'running', worker_id = $1, lease_until = now() + make_interval(secs => $2),
               heartbeat_at = now(), attempts = j.attempts + 1, started_at = coalesce(j.started_at, now()),
               attempt_started_at = now(), eta_at = NULL
           FROM next WHERE j.id = next.id
           RETURNING j.id, j.kind, j.run_id, j.params, j.resume_state, j.attempts AS attempt, j.max_attempts,
                     j.progress_done"#,
        worker_id,
        lease.as_secs_f64(),
        kinds,
        devices,
    )
    .fetch_optional(pool)
    .await?;
    if let Some(job) = &job {
        events::notify(pool, &Event::Job { job_id: job.id, run_id: job.run_id }).await?;
    }
    Ok(job)
}

/// Renews the lease. Returns `None` when this worker no longer holds the job
/// (the lease ran out and someone else took it), else whether a cancel was
/// requested.
pub async fn heartbeat(pool: &PgPool, job_id: i64, worker_id: &str, lease: Duration) -> Result<Option<bool>> {
    Ok(sqlx::query_scalar!(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => $3), heartbeat_at = now()
         WHERE id = $1 AND worker_id = $2 AND status = 'running'
         RETURNING cancel_requested",
        job_id,
        worker_id,
        lease.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?)
}

pub async fn set_progress(
    pool: &PgPool,
    job: &ClaimedJob,
    worker_id: &str,
    done: i64,
    total: Option<i64>,
    eta_at: Option<DateTime<Utc>>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE jobs SET progress_done = $3, progress_total = coalesce($4, progress_total), eta_at = $5
         WHERE id = $1 AND worker_id = $2 AND status = 'running'",
        job.id,
        worker_id,
        done,
        total,
        eta_at,
    )
    .execute(pool)
    .await?;
    events::notify(pool, &Event::Job { job_id: job.id, run_id: job.run_id }).await?;
    Ok(())
}

/// Stores the kind's durable point, e.g. the last finished training step.
pub async fn save_resume_state(pool: &PgPool, job_id: i64, worker_id: &str, state: &Value) -> Result<()> {
    sqlx::query!(
        "UPDATE jobs SET resume_state = $3 WHERE id = $1 AND worker_id = $2 AND status = 'running'",
        job_id,
        worker_id,
        state,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn append_log(pool: &PgPool, job_id: i64, level: &str, message: &str) -> Result<()> {
    let log_id = sqlx::query_scalar!(
        "INSERT INTO job_logs (job_id, level, message)
         SELECT $1, $2, $3 WHERE (SELECT count(*) FROM job_logs WHERE job_id = $1) < $4
         RETURNING id",
        job_id,
        level,
        message,
        MAX_LOG_LINES,
    )
    .fetch_optional(pool)
    .await?;
    if let Some(log_id) = log_id {
        events::notify(pool, &Event::Log { job_id, log_id }).await?;
    }
    Ok(())
}

/// How an attempt ended, as the worker saw it.
#[derive(Debug)]
pub enum Outcome {
    Succeeded,
    Cancelled,
    Failed(String),
    /// The worker is shutting down: the job goes back to the queue without
    /// using up an attempt and resumes from its durable point.
    Interrupted,
}

/// Records the end of an attempt. A failure with attempts left goes back to
/// the queue after an exponential backoff.
pub async fn finish(pool: &PgPool, job: &ClaimedJob, worker_id: &str, outcome: &Outcome) -> Result<JobStatus> {
    if let Outcome::Interrupted = outcome {
        sqlx::query!(
            "UPDATE jobs SET status = 'queued', attempts = greatest(attempts - 1, 0), lease_until = NULL,
                 eta_at = NULL, worker_id = NULL, run_after = now()
             WHERE id = $1 AND worker_id = $2 AND status = 'running'",
            job.id,
            worker_id,
        )
        .execute(pool)
        .await?;
        events::notify(pool, &Event::Job { job_id: job.id, run_id: job.run_id }).await?;
        return Ok(JobStatus::Queued);
    }
    let (status, error, retry_in) = match outcome {
        Outcome::Interrupted => unreachable!("handled above"),
        Outcome::Succeeded => (JobStatus::Succeeded, None, None),
        Outcome::Cancelled => (JobStatus::Cancelled, None, None),
        Outcome::Failed(e) if job.attempt < job.max_attempts => {
            (JobStatus::Queued, Some(e.as_str()), Some(backoff(job.attempt)))
        }
        Outcome::Failed(e) => (JobStatus::Failed, Some(e.as_str()), None),
    };
    let updated = sqlx::query_scalar!(
        "UPDATE jobs SET status = $3, error = $4, lease_until = NULL, eta_at = NULL,
                run_after = CASE WHEN $5::float8 IS NULL THEN run_after ELSE now() + make_interval(secs => $5) END,
                finished_at = CASE WHEN $3 = 'queued' THEN NULL ELSE now() END,
                worker_id = CASE WHEN $3 = 'queued' THEN NULL ELSE worker_id END
         WHERE id = $1 AND worker_id = $2 AND status = 'running'
         RETURNING id",
        job.id,
        worker_id,
        status.as_str(),
        error,
        retry_in.map(|d| d.as_secs_f64()),
    )
    .fetch_optional(pool)
    .await?;
    if updated.is_none() {
        // The lease was lost meanwhile; whoever holds the job now decides.
        tracing::warn!(job = job.id, "finished a job whose lease was lost; not recording the outcome");
    }
    events::notify(pool, &Event::Job { job_id: job.id, run_id: job.run_id }).await?;
    Ok(status)
}

/// 5 s, 10 s, 20 s, … capped at 10 minutes.
pub fn backoff(attempt: i32) -> Duration {
    let exp = attempt.clamp(1, 8) as u32 - 1;
    Duration::from_secs((5u64 << exp).min(600))
}

/// Settles running jobs whose workers died: cancelled if a cancel was
/// requested, failed if no attempts are left. Others stay claimable.
pub async fn reap_expired(pool: &PgPool) -> Result<u64> {
    let rows = sqlx::query!(
        "UPDATE jobs SET
             status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'failed' END,
             error = CASE WHEN cancel_requested THEN error
                          ELSE coalesce(error || '; ', '') || 'worker stopped responding (lease expired) and no attempts are left' END,
             finished_at = now(), lease_until = NULL, eta_at = NULL
         WHERE status = 'running' AND lease_until < now() AND (cancel_requested OR attempts >= max_attempts)
         RETURNING id, run_id"
    )
    .fetch_all(pool)
    .await?;
    for row in &rows {
        events::notify(pool, &Event::Job { job_id: row.id, run_id: row.run_id }).await?;
    }
    Ok(rows.len() as u64)
}

/// Cancels a queued job at once, or asks the worker of a running job to stop.
pub async fn request_cancel(pool: &PgPool, id: i64) -> Result<Job> {
    let job = get(pool, id).await?;
    if job.status.is_final() {
        return Err(Error::conflict("status", format!("job {id} is already {}", job.status.as_str())));
    }
    sqlx::query!(
        "UPDATE jobs SET cancel_requested = true,
             status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
             finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END
         WHERE id = $1 AND status IN ('queued', 'running')",
        id
    )
    .execute(pool)
    .await?;
    events::notify(pool, &Event::Job { job_id: id, run_id: job.run_id }).await?;
    get(pool, id).await
}

/// Queues a failed or cancelled job again, with a fresh set of attempts. It
/// resumes from its last durable point.
pub async fn retry(pool: &PgPool, id: i64) -> Result<Job> {
    let job = get(pool, id).await?;
    if !matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
        return Err(Error::conflict(
            "status",
            format!("only failed or cancelled jobs can be retried; job {id} is {}", job.status.as_str()),
        ));
    }
    sqlx::query!(
        "UPDATE jobs SET status = 'queued', attempts = 0, cancel_requested = false, error = NULL,
             run_after = now(), finished_at = NULL, worker_id = NULL
         WHERE id = $1 AND status IN ('failed', 'cancelled')",
        id
    )
    .execute(pool)
    .await?;
    events::notify(pool, &Event::Job { job_id: id, run_id: job.run_id }).await?;
    get(pool, id).await
}

struct JobRow {
    id: i64,
    kind: String,
    status: String,
    run_id: Option<i64>,
    params: Value,
    device: String,
    priority: i32,
    attempts: i32,
    max_attempts: i32,
    progress_done: i64,
    progress_total: Option<i64>,
    eta_at: Option<DateTime<Utc>>,
    cancel_requested: bool,
    worker_id: Option<String>,
    error: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    run_after: DateTime<Utc>,
}

impl From<JobRow> for Job {
    fn from(r: JobRow) -> Self {
        let status = JobStatus::parse(&r.status).unwrap_or(JobStatus::Failed);
        let eta_seconds = match (status, r.eta_at) {
            (JobStatus::Running, Some(eta)) => Some(((eta - Utc::now()).num_milliseconds() as f64 / 1000.0).max(0.0)),
            _ => None,
        };
        Job {
            id: r.id,
            kind: r.kind,
            status,
            run_id: r.run_id,
            params: r.params,
            device: r.device,
            priority: r.priority,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            progress_done: r.progress_done,
            progress_total: r.progress_total,
            eta_seconds,
            cancel_requested: r.cancel_requested,
            worker_id: r.worker_id,
            error: r.error,
            created_at: r.created_at.to_rfc3339(),
            started_at: r.started_at.map(|t| t.to_rfc3339()),
            finished_at: r.finished_at.map(|t| t.to_rfc3339()),
            run_after: r.run_after.to_rfc3339(),
        }
    }
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Job> {
    sqlx::query_as!(
        JobRow,
        "SELECT id, kind, status, run_id, params, device, priority, attempts, max_attempts, progress_done,
                progress_total, eta_at, cancel_requested, worker_id, error, created_at, started_at, finished_at,
                run_after
         FROM jobs WHERE id = $1",
        id
    )
    .fetch_optional(pool)
    .await?
    .map(Into::into)
    .ok_or_else(|| Error::NotFound(format!("job {id}")))
}

#[derive(Debug, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    pub run_id: Option<i64>,
    /// Return jobs with ids below this (newest first).
    pub before: Option<i64>,
    pub limit: i64,
}

pub async fn list(pool: &PgPool, filter: &JobFilter) -> Result<Page<Job>> {
    let mut rows = sqlx::query_as!(
        JobRow,
        "SELECT id, kind, status, run_id, params, device, priority, attempts, max_attempts, progress_done,
                progress_total, eta_at, cancel_requested, worker_id, error, created_at, started_at, finished_at,
                run_after
         FROM jobs
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2)
           AND ($3::bigint IS NULL OR run_id = $3) AND ($4::bigint IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5",
        filter.status.map(JobStatus::as_str),
        filter.kind,
        filter.run_id,
        filter.before,
        filter.limit + 1,
    )
    .fetch_all(pool)
    .await?;
    let next_cursor = if rows.len() as i64 > filter.limit {
        rows.truncate(filter.limit as usize);
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(Page { items: rows.into_iter().map(Into::into).collect(), next_cursor })
}

pub async fn logs(pool: &PgPool, job_id: i64, after: i64, limit: i64) -> Result<Vec<JobLog>> {
    let rows = sqlx::query!(
        "SELECT id, ts, level, message FROM job_logs WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        job_id,
        after,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| JobLog { id: r.id, ts: r.ts.to_rfc3339(), level: r.level, message: r.message })
        .collect())
}
