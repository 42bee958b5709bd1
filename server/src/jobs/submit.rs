//! Submitting a job: the one path used by the REST API, the CLI and the UI.

use rlt_types::{DeviceRequirement, Job, SubmitJob};
use sqlx::PgPool;

use super::queue::{self, NewJob};
use super::registry::Registry;
use crate::error::{Error, Result};

pub const MAX_ATTEMPTS_LIMIT: i32 = 10;
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;

pub async fn submit(db: &PgPool, registry: &Registry, req: SubmitJob) -> Result<Job> {
    let kind = registry.get(&req.kind).ok_or_else(|| {
        Error::invalid(
            Some("kind".to_owned()),
            format!("unknown job kind `{}`; this server offers: {}", req.kind, registry.names().join(", ")),
        )
    })?;
    let max_attempts = req.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
        return Err(Error::invalid(
            Some("max_attempts".to_owned()),
            format!("max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
        ));
    }
    let priority = req.priority.unwrap_or(0);
    if !(-1000..=1000).contains(&priority) {
        return Err(Error::invalid(Some("priority".to_owned()), "priority must be between -1000 and 1000"));
    }
    let params = if req.params.is_null() { serde_json::json!({}) } else { req.params };
    if !params.is_object() {
        return Err(Error::invalid(Some("params".to_owned()), "params must be a JSON object"));
    }
    let prepared = kind.prepare(db, params).await?;
    queue::submit(
        db,
        NewJob {
            kind: kind.name(),
            params: &prepared.params,
            run_id: prepared.run_id,
            device: req.device.unwrap_or(DeviceRequirement::Any).as_str(),
            priority,
            max_attempts,
        },
    )
    .await
}
