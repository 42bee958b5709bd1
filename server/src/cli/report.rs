//! `rlt report RUN --out report.html`: the run report as one HTML file.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::GlobalArgs;
use crate::db::Database;
use crate::report;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run's id.
    run: i64,
    /// Where to write the file (default: rlt-run-<RUN>-report.html).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

pub async fn run(global: &GlobalArgs, args: ReportArgs) -> anyhow::Result<()> {
    let db = Database::open(global.database_url.as_deref(), &global.data_dir, 2, false).await?;
    let result = report::render(&db.pool, args.run).await;
    db.close().await?;
    let html = result?;
    let out = args.out.unwrap_or_else(|| PathBuf::from(format!("rlt-run-{}-report.html", args.run)));
    std::fs::write(&out, html).with_context(|| format!("writing {}", out.display()))?;
    super::print_line(format_args!("{}", out.display()))?;
    Ok(())
}
