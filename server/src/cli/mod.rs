//! The `rlt` command line. Every flag has an environment-variable twin.

mod db;
mod generate;
mod import;
mod jobs;
mod report;
mod score;
mod serve;
mod worker;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rlt",
    version,
    about = "RLT Studio: run and inspect Reinforcement-Learned Teacher experiments",
    long_about = "RLT Studio: run and inspect Reinforcement-Learned Teacher experiments.\n\n\
                  Without DATABASE_URL, state lives in an embedded Postgres cluster under the \
                  data directory, started and stopped as needed. Logs honour RUST_LOG \
                  (e.g. RUST_LOG=rlt_server=debug)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Directory for the model, datasets, the embedded Postgres cluster and artifacts.
    #[arg(long, env = "RLT_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,
    /// Postgres server to use, e.g. postgres://user@host/db. Without it an
    /// embedded cluster is run from the data directory.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Object store for checkpoints and exports: file:///dir or s3://bucket/prefix
    /// (default: <data-dir>/artifacts). Workers on several machines need a shared one.
    #[arg(long, env = "RLT_ARTIFACTS", global = true)]
    pub artifacts: Option<String>,
}

impl GlobalArgs {
    pub fn artifacts(&self) -> anyhow::Result<crate::artifacts::Artifacts> {
        crate::artifacts::Artifacts::open(self.artifacts.as_deref(), &self.data_dir)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the web app and REST API (and import demo data on first start).
    Serve(serve::ServeArgs),
    /// Import a dataset (CHAMP, JSONL or synthetic arithmetic).
    Import(import::ImportArgs),
    /// Score explanations with the RLT reward (JSONL in, JSONL out).
    Score(score::ScoreArgs),
    /// Sample completions from a model.
    Generate(generate::GenerateArgs),
    /// Per-token log-probs of a text under a model, as JSON.
    Logprobs(generate::LogprobsArgs),
    /// Run a stand-alone job worker (e.g. on a GPU machine) against DATABASE_URL.
    Worker(worker::WorkerCommand),
    /// Submit, list, follow, cancel and retry jobs.
    Jobs(jobs::JobsArgs),
    /// Write a run's report (config, curves, reward distribution, best and
    /// worst explanations) as one self-contained HTML file.
    Report(report::ReportArgs),
    /// Manage the embedded Postgres cluster.
    Db(db::DbArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Said up front: otherwise the first command to create something in it
    // reports "File exists" for a path that plainly does.
    let dir = &cli.global.data_dir;
    anyhow::ensure!(
        !dir.exists() || dir.is_dir(),
        "the data directory {} (--data-dir or RLT_DATA_DIR) is not a directory",
        dir.display()
    );
    match cli.command {
        Command::Serve(args) => serve::run(&cli.global, args).await,
        Command::Import(args) => import::run(&cli.global, args).await,
        Command::Score(args) => score::run(&cli.global, args).await,
        Command::Generate(args) => generate::run_generate(&cli.global, args).await,
        Command::Logprobs(args) => generate::run_logprobs(&cli.global, args).await,
        Command::Report(args) => report::run(&cli.global, args).await,
        Command::Worker(args) => worker::run(&cli.global, args).await,
        Command::Jobs(args) => jobs::run(&cli.global, args).await,
        Command::Db(args) => db::run(&cli.global, args).await,
    }
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// Writes `line` to stdout. println! panics when that fails (a full disk:
/// `> /dev/full`); here it is an error, which unwinds the command (an
/// embedded Postgres it started stops) and which `main` reports, or, for
/// a reader that went away (`| head`), ends quietly as other Unix tools do
/// (see [`is_broken_pipe`]).
pub(crate) fn print_line(line: impl std::fmt::Display) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").and_then(|()| stdout.flush()).context("writing to standard output")
}

/// Whether a command failed only because its output's reader went away.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// The CLI's bar look (`=> `) on `template`, a literal.
pub(crate) fn bar_style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ")
}

/// A message above a progress bar, or plainly on stderr when the bar is
/// hidden (not a terminal), where indicatif would drop it.
pub(crate) fn print_above(bar: &indicatif::ProgressBar, message: String) {
    if bar.is_hidden() {
        eprintln!("{message}");
    } else {
        bar.println(message);
    }
}
