//! `rlt jobs submit|list|follow|cancel|retry`: the job queue from a terminal,
//! through the same functions as the REST API.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use rlt_types::{Job, JobStatus, SubmitJob};

use super::GlobalArgs;
use crate::db::Database;
use crate::jobs::events::{Event, EventHub};
use crate::jobs::{Registry, queue, submit};

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Queue a job of a kind (`rlt jobs kinds` lists them) and optionally follow it.
    Submit {
        kind: String,
        /// Kind-specific parameters as JSON, e.g. '{"run_id": 3}'.
        #[arg(long, default_value = "{}")]
        params: String,
        #[arg(long)]
        max_attempts: Option<i32>,
        /// Follow the job with a progress bar until it ends.
        #[arg(long)]
        follow: bool,
    },
    /// The job kinds this build offers, with their parameter schemas.
    Kinds,
    /// Recent jobs, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Show a job's progress bar and log lines until it ends.
    Follow { id: i64 },
    /// Cancel a queued or running job.
    Cancel { id: i64 },
    /// Queue a failed or cancelled job again.
    Retry { id: i64 },
}

pub async fn run(global: &GlobalArgs, args: JobsArgs) -> anyhow::Result<()> {
    let db = Database::open(global.database_url.as_deref(), &global.data_dir, 4, false).await?;
    let result = dispatch(&db, args.command).await;
    db.close().await?;
    result
}

async fn dispatch(db: &Database, command: JobsCommand) -> anyhow::Result<()> {
    let registry = Registry::standard();
    match command {
        JobsCommand::Submit { kind, params, max_attempts, follow: then_follow } => {
            let params = serde_json::from_str(&params).context("--params is not valid JSON")?;
            let job = submit::submit(
                &db.pool,
                &registry,
                SubmitJob { kind, params, device: None, priority: None, max_attempts },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            super::print_line(format_args!("queued job {} ({})", job.id, job.kind))?;
            if then_follow {
                follow(db, job.id).await?;
            }
        }
        JobsCommand::Kinds => {
            for kind in registry.describe() {
                super::print_line(format_args!(
                    "{}: {}\n  params: {}",
                    kind.name, kind.description, kind.params_schema
                ))?;
            }
        }
        JobsCommand::List { status, limit } => {
            let status =
                status.map(|s| JobStatus::parse(&s).with_context(|| format!("unknown status {s}"))).transpose()?;
            let page = queue::list(&db.pool, &queue::JobFilter { status, limit, ..Default::default() }).await?;
            super::print_line(format_args!(
                "{:>6}  {:<12} {:<10} {:>12}  created",
                "id", "kind", "status", "progress"
            ))?;
            for job in page.items {
                let progress = match job.progress_total {
                    Some(t) => format!("{}/{}", job.progress_done, t),
                    None => job.progress_done.to_string(),
                };
                super::print_line(format_args!(
                    "{:>6}  {:<12} {:<10} {:>12}  {}",
                    job.id,
                    job.kind,
                    job.status.as_str(),
                    progress,
                    job.created_at
                ))?;
            }
        }
        JobsCommand::Follow { id } => follow(db, id).await?,
        JobsCommand::Cancel { id } => {
            let job = queue::request_cancel(&db.pool, id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            super::print_line(format_args!(
                "job {id}: {}",
                if job.status == JobStatus::Cancelled { "cancelled" } else { "cancel requested" }
            ))?;
        }
        JobsCommand::Retry { id } => {
            queue::retry(&db.pool, id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            super::print_line(format_args!("job {id} queued again"))?;
        }
    }
    Ok(())
}

/// A progress bar with the job's logs printed above it, until the job ends.
async fn follow(db: &Database, id: i64) -> anyhow::Result<()> {
    let events = EventHub::start(db.pool.clone());
    let mut rx = events.subscribe();
    let bar = ProgressBar::new(0);
    bar.set_style(super::bar_style("{spinner} job {prefix} {msg:10} [{bar:40}] {pos}/{len} (eta {eta})"));
    bar.set_prefix(id.to_string());
    let mut last_log = 0;
    loop {
        let job: Job = queue::get(&db.pool, id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        for line in queue::logs(&db.pool, id, last_log, 1000).await? {
            last_log = line.id;
            super::print_above(&bar, format!("[{}] {}", line.level, line.message));
        }
        bar.set_length(job.progress_total.unwrap_or(0).max(0) as u64);
        bar.set_position(job.progress_done.max(0) as u64);
        bar.set_message(job.status.as_str());
        if job.status.is_final() {
            bar.finish();
            return match job.status {
                JobStatus::Succeeded => Ok(()),
                _ => Err(anyhow::anyhow!(
                    "job {id} {}{}",
                    job.status.as_str(),
                    job.error.map(|e| format!(": {e}")).unwrap_or_default()
                )),
            };
        }
        // Wake on this job's events, or every second regardless.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(event) = rx.recv().await {
                if matches!(event, Event::Job { job_id, .. } | Event::Log { job_id, .. } if job_id == id) {
                    break;
                }
            }
        })
        .await;
        bar.tick();
    }
}
