//! The handle a running job uses to report progress, logs and metrics and
//! to notice cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::Utc;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgPool;

use super::events::{self, Event};
use super::queue::{self, ClaimedJob};
use crate::error::{Error, Result};

pub struct JobContext {
    pub db: PgPool,
    pub job: ClaimedJob,
    pub worker_id: String,
    pub data_dir: std::path::PathBuf,
    /// Device models run on: `cpu` or `cuda`.
    device: String,
    /// Checkpoints and exports go here.
    pub artifacts: crate::artifacts::Artifacts,
    cancelled: Arc<AtomicBool>,
    started: Instant,
}

/// Why a job stopped early.
#[derive(Debug, thiserror::Error)]
#[error("the job was cancelled")]
pub struct Cancelled;

impl JobContext {
    pub fn new(
        db: PgPool,
        job: ClaimedJob,
        worker_id: String,
        data_dir: std::path::PathBuf,
        device: String,
        artifacts: crate::artifacts::Artifacts,
        cancelled: Arc<AtomicBool>,
    ) -> Self {
        JobContext { db, job, worker_id, data_dir, device, artifacts, cancelled, started: Instant::now() }
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn params<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.job.params.clone())
            .map_err(|e| Error::invalid(Some("params".to_owned()), format!("stored job parameters are invalid: {e}")))
    }

    pub fn resume_state<T: DeserializeOwned + Default>(&self) -> T {
        serde_json::from_value(self.job.resume_state.clone()).unwrap_or_default()
    }

    /// A shared flag for blocking code (model work on other threads) to poll.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Returns `Err(Cancelled)` once a cancel was requested: `ctx.check_cancelled()?`.
    pub fn check_cancelled(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() { Err(Cancelled) } else { Ok(()) }
    }

    /// Progress of this attempt, with an ETA from the rate since it started.
    /// `done_at_start` is what was already done when the attempt began, so a
    /// resumed job's ETA reflects its own speed.
    pub async fn progress(&self, done: i64, total: Option<i64>, done_at_start: i64) -> Result<()> {
        let eta_at = total.and_then(|total| {
            let done_now = done - done_at_start;
            (done_now > 0 && total >= done).then(|| {
                let per_unit = self.started.elapsed().as_secs_f64() / done_now as f64;
                let remaining = per_unit * (total - done) as f64;
                Utc::now() + chrono::Duration::milliseconds((remaining * 1000.0) as i64)
            })
        });
        queue::set_progress(&self.db, &self.job, &self.worker_id, done, total, eta_at).await
    }

    pub async fn log(&self, level: &str, message: impl AsRef<str>) -> Result<()> {
        let message = message.as_ref();
        match level {
            "error" => tracing::error!(job = self.job.id, "{message}"),
            "warn" => tracing::warn!(job = self.job.id, "{message}"),
            _ => tracing::info!(job = self.job.id, "{message}"),
        }
        queue::append_log(&self.db, self.job.id, level, message).await
    }

    pub async fn info(&self, message: impl AsRef<str>) -> Result<()> {
        self.log("info", message).await
    }

    /// Records a metric point of the job's run; writing the same (name, step)
    /// again replaces it, so a retried step does not duplicate points.
    pub async fn metric(&self, name: &str, step: i64, value: f64) -> Result<()> {
        let Some(run_id) = self.job.run_id else {
            return Ok(());
        };
        sqlx::query!(
            "INSERT INTO metrics (run_id, name, step, value) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, name, step) DO UPDATE SET value = EXCLUDED.value, ts = now()",
            run_id,
            name,
            step,
            value,
        )
        .execute(&self.db)
        .await?;
        // NOTIFY payloads are JSON, which has no NaN; alarms read the stored row.
        if value.is_finite() {
            events::notify(&self.db, &Event::Metric { run_id, name: name.to_owned(), step, value }).await?;
        }
        Ok(())
    }

    pub async fn save_resume_state(&self, state: &Value) -> Result<()> {
        queue::save_resume_state(&self.db, self.job.id, &self.worker_id, state).await
    }
}
