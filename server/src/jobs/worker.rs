//! A worker: claims jobs it can run, keeps their leases alive, runs them and
//! records how they ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use super::context::{Cancelled, JobContext};
use super::events::{Event, EventHub};
use super::queue::{self, ClaimedJob, Outcome};
use super::registry::Registry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerDevice {
    Cpu,
    Cuda,
}

impl WorkerDevice {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerDevice::Cpu => "cpu",
            WorkerDevice::Cuda => "cuda",
        }
    }

    /// Job device requirements this worker satisfies.
    fn claimable(self) -> Vec<String> {
        vec!["any".to_owned(), self.as_str().to_owned()]
    }
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub id: String,
    pub device: WorkerDevice,
    /// How long a claim stays valid without a heartbeat.
    pub lease: Duration,
    /// Heartbeats come this often; it also bounds how fast a cancel is seen.
    pub heartbeat: Duration,
    /// Fallback poll when no notification arrives (e.g. a backoff elapsed).
    pub poll: Duration,
    pub data_dir: std::path::PathBuf,
    /// Where jobs store checkpoints and exports.
    pub artifacts: crate::artifacts::Artifacts,
}

impl WorkerConfig {
    pub fn new(
        device: WorkerDevice,
        data_dir: std::path::PathBuf,
        artifacts: crate::artifacts::Artifacts,
        lease: Duration,
    ) -> Self {
        let host = hostname();
        WorkerConfig {
            id: format!("{host}-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]),
            device,
            lease,
            heartbeat: (lease / 5).clamp(Duration::from_millis(200), Duration::from_secs(2)),
            poll: Duration::from_secs(2),
            data_dir,
            artifacts,
        }
    }
}

/// Runs until `shutdown` turns true. A job in flight at shutdown is
/// interrupted and goes back to the queue.
pub async fn run(
    db: PgPool,
    registry: Arc<Registry>,
    events: EventHub,
    config: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    register(&db, &config, &registry).await?;
    tracing::info!(worker = %config.id, device = config.device.as_str(), "worker started");
    let kinds = registry.names();
    let devices = config.device.claimable();
    let mut wakeups = events.subscribe();
    while !*shutdown.borrow() {
        if let Err(e) = queue::reap_expired(&db).await {
            tracing::warn!(error = %e, "could not settle expired jobs");
        }
        match queue::claim(&db, &config.id, config.lease, &devices, &kinds).await {
            Ok(Some(job)) => run_one(&db, &registry, &config, job, &mut shutdown).await,
            Ok(None) => {
                // Sleep until something is queued, the poll interval passes or we stop.
                let wait = async {
                    loop {
                        match wakeups.recv().await {
                            Ok(Event::Job { .. }) | Err(_) => break,
                            Ok(_) => continue,
                        }
                    }
                };
                tokio::select! {
                    () = wait => {},
                    () = tokio::time::sleep(config.poll) => {},
                    _ = shutdown.changed() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming a job failed; retrying");
                tokio::time::sleep(config.poll).await;
            }
        }
    }
    sqlx::query!("UPDATE workers SET stopped_at = now() WHERE id = $1", config.id).execute(&db).await?;
    tracing::info!(worker = %config.id, "worker stopped");
    Ok(())
}

async fn run_one(
    db: &PgPool,
    registry: &Registry,
    config: &WorkerConfig,
    job: ClaimedJob,
    shutdown: &mut watch::Receiver<bool>,
) {
    let Some(kind) = registry.get(&job.kind).cloned() else {
        // Claims are filtered by kind, so this means a bad deploy mix.
        let _ = queue::finish(db, &job, &config.id, &Outcome::Failed(format!("unknown job kind {}", job.kind))).await;
        return;
    };
    tracing::info!(job = job.id, kind = %job.kind, attempt = job.attempt, "running job");
    let cancelled = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicBool::new(false));
    let ctx = JobContext::new(
        db.clone(),
        job.clone(),
        config.id.clone(),
        config.data_dir.clone(),
        config.device.as_str().to_owned(),
        config.artifacts.clone(),
        cancelled.clone(),
    );

    let heartbeat = {
        let (db, config, cancelled, interrupted, lost, mut shutdown) =
            (db.clone(), config.clone(), cancelled.clone(), interrupted.clone(), lost.clone(), shutdown.clone());
        let job_id = job.id;
        tokio::spawn(async move {
            let mut stopping = false;
            loop {
                if stopping {
                    tokio::time::sleep(config.heartbeat).await;
                } else {
                    tokio::select! {
                        () = tokio::time::sleep(config.heartbeat) => {},
                        _ = shutdown.changed() => {},
                    }
                }
                if *shutdown.borrow() {
                    stopping = true;
                    interrupted.store(true, Ordering::Relaxed);
                    cancelled.store(true, Ordering::Relaxed);
                }
                match queue::heartbeat(&db, job_id, &config.id, config.lease).await {
                    Ok(Some(cancel)) => {
                        if cancel {
                            cancelled.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(job = job_id, "lost the lease on this job; stopping it");
                        lost.store(true, Ordering::Relaxed);
                        cancelled.store(true, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => tracing::warn!(job = job_id, error = %e, "heartbeat failed"),
                }
            }
        })
    };

    let result = kind.run(&ctx).await;
    heartbeat.abort();
    if lost.load(Ordering::Relaxed) {
        return;
    }
    let outcome = match result {
        Ok(()) => Outcome::Succeeded,
        Err(_) if interrupted.load(Ordering::Relaxed) => Outcome::Interrupted,
        Err(e) if e.is::<Cancelled>() || cancelled.load(Ordering::Relaxed) => Outcome::Cancelled,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    if let Outcome::Failed(message) = &outcome {
        let _ = ctx.log("error", message).await;
    }
    match queue::finish(db, &job, &config.id, &outcome).await {
        Ok(status) => tracing::info!(job = job.id, status = status.as_str(), "job finished"),
        Err(e) => tracing::error!(job = job.id, error = %e, "could not record the end of a job"),
    }
}

async fn register(db: &PgPool, config: &WorkerConfig, registry: &Registry) -> anyhow::Result<()> {
    sqlx::query!(
        "INSERT INTO workers (id, hostname, device, kinds) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
        config.id,
        hostname(),
        config.device.as_str(),
        &registry.names(),
    )
    .execute(db)
    .await?;
    Ok(())
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
}
