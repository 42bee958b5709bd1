//! What a job kind is. Adding a kind means writing one module that
//! implements [`JobKind`] and listing it in [`super::registry`]; the queue,
//! workers, API and UI need no change.

use std::sync::Arc;

use serde_json::Value;
use sqlx::PgPool;

use super::context::JobContext;
use crate::error::Result;

/// A submitted job after its kind checked and completed the parameters.
pub struct PreparedJob {
    pub params: Value,
    /// The run the job belongs to, if any (its metrics are recorded there).
    pub run_id: Option<i64>,
}

#[async_trait::async_trait]
pub trait JobKind: Send + Sync + 'static {
    /// Stable name stored in `jobs.kind`.
    fn name(&self) -> &'static str;

    /// One line for people choosing a kind.
    fn description(&self) -> &'static str;

    /// JSON Schema of the parameters, for API docs and generated UI forms.
    fn params_schema(&self) -> Value;

    /// Validates parameters at submit time (a 4xx names the bad field) and
    /// fills in defaults, so a queued job never fails on its input.
    async fn prepare(&self, db: &PgPool, params: Value) -> Result<PreparedJob>;

    /// Does the work. Must resume from `ctx.job.resume_state` and what is
    /// already stored, write idempotently, and return soon after
    /// `ctx.is_cancelled()` turns true.
    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()>;
}

pub type SharedKind = Arc<dyn JobKind>;
