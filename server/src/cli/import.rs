//! `rlt import champ|jsonl|synthetic`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::GlobalArgs;
use crate::db::Database;
use crate::error::Error;
use crate::import;

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    source: Source,
}

#[derive(Debug, Subcommand)]
enum Source {
    /// CHAMP from its v0.json (by default the copy `make run` fetched into the data directory).
    Champ {
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, default_value = import::CHAMP_NAME)]
        name: String,
    },
    /// A JSONL file in the RLT / Bespoke-Stratos style (see the README for fields).
    Jsonl {
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Seeded multi-step arithmetic word problems.
    Synthetic {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = import::synthetic::DEFAULT_COUNT)]
        count: usize,
    },
}

pub async fn run(global: &GlobalArgs, args: ImportArgs) -> anyhow::Result<()> {
    // Parse before connecting, so a bad file fails fast and touches nothing.
    let (dataset, input_name) = match args.source {
        Source::Champ { file, name } => {
            let path = file.unwrap_or_else(|| global.data_dir.join(import::champ::DEFAULT_PATH));
            (import::from_champ_file(&path, name).await, path.display().to_string())
        }
        Source::Jsonl { file, name, description } => {
            let content = tokio::fs::read(&file).await.with_context(|| format!("reading {}", file.display()))?;
            let params = json!({ "file": file.file_name().map(|f| f.to_string_lossy()) });
            (import::from_jsonl(content, name, description, params).await, file.display().to_string())
        }
        Source::Synthetic { name, seed, count } => {
            anyhow::ensure!(
                (1..=import::synthetic::MAX_COUNT).contains(&count),
                "--count must be between 1 and {}",
                import::synthetic::MAX_COUNT
            );
            (Ok(import::from_synthetic(name, seed, count)), "synthetic".to_owned())
        }
    };
    let dataset = dataset.map_err(|e| report(&input_name, e))?;
    let db = Database::open(global.database_url.as_deref(), &global.data_dir, 4, false).await?;
    let result = import::store(&db.pool, dataset).await;
    db.close().await?;
    let summary = result.map_err(|e| report(&input_name, e))?;
    super::print_line(format_args!(
        "imported dataset '{}' (id {}): {} questions, {} reference explanations",
        summary.name, summary.id, summary.question_count, summary.reference_count
    ))?;
    Ok(())
}

/// Formats input errors the way compilers do (`file:line: message`), one per line.
fn report(input: &str, e: Error) -> anyhow::Error {
    match e {
        Error::InvalidInput(errors) => {
            let lines: Vec<String> = errors
                .iter()
                .map(|err| match err.line {
                    Some(line) => format!(
                        "{input}:{line}: {}",
                        err.field.as_ref().map_or(err.message.clone(), |f| format!("field `{f}`: {}", err.message))
                    ),
                    None => format!("{input}: {err}"),
                })
                .collect();
            anyhow::anyhow!("nothing was imported:\n{}", lines.join("\n"))
        }
        other => anyhow::anyhow!("nothing was imported: {other}"),
    }
}
