//! `rlt score`: the RLT reward of explanations in a JSONL file.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::ProgressBar;
use rlt_engine::reward::ScoreInput;
use rlt_types::{RewardConfig, ScoreItem, ScoreOutcome};

use super::GlobalArgs;
use crate::models;
use crate::scoring::{self, BATCH, ScoringModels};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// JSONL input, one {"question", "solution", "completion"} per line
    /// (`completion` is the text after `<|begin_of_explanation|>\n\n`).
    #[arg(long)]
    input: PathBuf,
    /// Where to write one JSON result per input line, in order (default: stdout).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Teacher model: a GGUF file or a Hugging Face directory (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Student model (default: the teacher).
    #[arg(long)]
    student: Option<PathBuf>,
    /// A JSON file overriding parts of the reward config (temperatures, coefficients, prompts, tags).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Device to run on: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub async fn run(global: &GlobalArgs, args: ScoreArgs) -> anyhow::Result<()> {
    let cfg: RewardConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not a valid reward config", path.display()))?
        }
        None => RewardConfig::default(),
    };
    if let Some((field, message)) = cfg.problems().into_iter().next() {
        anyhow::bail!("reward config: {field} {message}");
    }
    let teacher = args.teacher.clone().unwrap_or_else(|| global.data_dir.join(models::DEFAULT_FILE));
    let student = args.student.clone().unwrap_or_else(|| teacher.clone());
    let models = ScoringModels { teacher, student, device: args.device.clone() };

    let file = std::fs::File::open(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    // Parse every line first: bad lines are reported (and written as
    // errors in their place) while the others are scored.
    let mut parsed: Vec<(u64, Result<ScoreInput, String>)> = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {} line {}", args.input.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        parsed.push((
            i as u64 + 1,
            parse_item(&line).map_err(|e| format!("{}:{}: {e}", args.input.display(), i + 1)).map(|item| ScoreInput {
                question: item.question,
                solution: item.solution,
                completion: item.completion,
            }),
        ));
    }
    anyhow::ensure!(!parsed.is_empty(), "{} has no lines to score", args.input.display());

    let bar = ProgressBar::new(parsed.len() as u64);
    bar.set_style(super::bar_style("scoring [{bar:40}] {pos}/{len} {per_sec} eta {eta}"));
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut failures = 0usize;
    for chunk in parsed.chunks(BATCH) {
        let good: Vec<ScoreInput> = chunk.iter().filter_map(|(_, p)| p.as_ref().ok().cloned()).collect();
        let mut scored = if good.is_empty() {
            Vec::new().into_iter()
        } else {
            scoring::score(&models, &cfg, good).await.map_err(|e| anyhow::anyhow!("{e}"))?.into_iter()
        };
        for (line, item) in chunk {
            let line = *line;
            let outcome = match item {
                Err(error) => ScoreOutcome::Failed { line, error: error.clone() },
                Ok(_) => match scored.next().expect("one result per good item") {
                    Ok(score) => ScoreOutcome::Scored(score),
                    Err(error) => ScoreOutcome::Failed { line, error },
                },
            };
            if let ScoreOutcome::Failed { error, .. } = &outcome {
                failures += 1;
                super::print_above(&bar, format!("error: line {line}: {error}"));
            }
            serde_json::to_writer(&mut out, &outcome)?;
            out.write_all(b"\n")?;
            bar.inc(1);
        }
    }
    out.flush()?;
    bar.finish();
    anyhow::ensure!(failures == 0, "{failures} of {} lines could not be scored", parsed.len());
    Ok(())
}

/// One input line, with errors naming the field (`field `solution`: …`).
fn parse_item(line: &str) -> Result<ScoreItem, String> {
    let de = &mut serde_json::Deserializer::from_str(line);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." { e.inner().to_string() } else { format!("field `{path}`: {}", e.inner()) }
    })
}
