//! `rlt worker`: a stand-alone worker for another machine, claiming jobs
//! from the shared Postgres.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::sync::watch;

use super::GlobalArgs;
use crate::db::Database;
use crate::jobs::Registry;
use crate::jobs::events::EventHub;
use crate::jobs::worker::{self, WorkerConfig, WorkerDevice};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

/// Worker settings shared by `rlt worker` and `rlt serve`.
#[derive(Debug, Args, Clone)]
pub struct WorkerArgs {
    /// The device this machine runs models on; it claims jobs for `any` and this device.
    #[arg(long, env = "RLT_DEVICE", value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Seconds a claimed job stays ours without a heartbeat; after that another worker takes it over.
    #[arg(long, env = "RLT_JOB_LEASE_SECS", default_value_t = 30.0)]
    pub lease_secs: f64,
}

impl WorkerArgs {
    pub fn config(
        &self,
        data_dir: &std::path::Path,
        artifacts: &crate::artifacts::Artifacts,
    ) -> anyhow::Result<WorkerConfig> {
        anyhow::ensure!(self.lease_secs.is_finite() && self.lease_secs >= 1.0, "--lease-secs must be at least 1");
        let device = match self.device {
            DeviceArg::Cpu => WorkerDevice::Cpu,
            DeviceArg::Cuda => {
                // Claiming CUDA jobs without a usable GPU would only fail them later.
                rlt_engine::device::parse_device("cuda").map_err(|e| {
                    anyhow::anyhow!("--device cuda: {e} (build with `--features cuda` on a machine with a GPU)")
                })?;
                WorkerDevice::Cuda
            }
        };
        Ok(WorkerConfig::new(device, data_dir.to_owned(), artifacts.clone(), Duration::from_secs_f64(self.lease_secs)))
    }
}

#[derive(Debug, Args)]
pub struct WorkerCommand {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Jobs to run at the same time on this machine.
    #[arg(long, env = "RLT_WORKERS", default_value_t = 1)]
    concurrency: usize,
}

pub async fn run(global: &GlobalArgs, args: WorkerCommand) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    // Check the settings before touching the database, so a bad flag leaves
    // nothing running.
    let artifacts = global.artifacts()?;
    let configs = (0..args.concurrency)
        .map(|_| args.worker.config(&global.data_dir, &artifacts))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let db = Database::open(global.database_url.as_deref(), &global.data_dir, 4 + 2 * args.concurrency as u32, false)
        .await?;
    let events = EventHub::start(db.pool.clone());
    let registry = Arc::new(Registry::standard());
    let (stop, stopped) = watch::channel(false);
    let handles: Vec<_> = configs
        .into_iter()
        .map(|config| {
            tokio::spawn(worker::run(db.pool.clone(), registry.clone(), events.clone(), config, stopped.clone()))
        })
        .collect();
    super::shutdown_signal().await;
    let _ = stop.send(true);
    let mut result = Ok(());
    for h in handles {
        if let Err(e) = h.await.map_err(anyhow::Error::from).and_then(|r| r) {
            result = Err(e);
        }
    }
    db.close().await?;
    result
}
