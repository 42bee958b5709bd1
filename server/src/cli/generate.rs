//! `rlt generate` and `rlt logprobs`: the engine from a terminal.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use rlt_engine::chat_template::{Ending, Message};
use rlt_engine::generate::{GenerateParams, generate};
use rlt_engine::load::WeightMode;
use rlt_engine::logprobs::{PROGRESS_CHUNK, sequence_logprobs};
use serde_json::json;

use super::{GlobalArgs, print_line};
use crate::{model_cache, models};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Weights {
    /// Dense f32 (exact).
    F32,
    /// Quantized projections (fast decoding).
    Quantized,
}

impl From<Weights> for WeightMode {
    fn from(w: Weights) -> Self {
        match w {
            Weights::F32 => WeightMode::F32,
            Weights::Quantized => WeightMode::Quantized,
        }
    }
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face directory (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl ModelArgs {
    fn path(&self, global: &GlobalArgs) -> PathBuf {
        self.model.clone().unwrap_or_else(|| global.data_dir.join(models::DEFAULT_FILE))
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user message (rendered with the model's chat template unless --raw).
    #[arg(long)]
    prompt: String,
    /// A system message.
    #[arg(long)]
    system: Option<String>,
    /// Send the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Completions to sample.
    #[arg(short, long, default_value_t = 1)]
    n: usize,
    /// Sampling temperature (0 = greedy).
    // Negative numbers are taken as values so that the engine's validation,
    // not clap's "unexpected argument", says what is wrong.
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this mass (1 = all).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f64,
    /// Most tokens to generate per completion.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// The same seed gives the same completions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long, value_enum, default_value = "quantized")]
    weights: Weights,
    /// Print JSON lines (text, tokens, finish reason, log-probs) instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run_generate(global: &GlobalArgs, args: GenerateArgs) -> anyhow::Result<()> {
    let path = args.model.path(global);
    let params = GenerateParams {
        n: args.n,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop: args.stop.clone(),
        ..GenerateParams::default()
    };
    // Before the model loads: a typo should not cost a second or more.
    params.validate()?;
    tokio::task::spawn_blocking(move || {
        let model = model_cache::shared().get(&path, args.weights.into(), &args.model.device)?;
        let text = if args.raw {
            args.prompt.clone()
        } else {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(Message::system(system));
            }
            messages.push(Message::user(&args.prompt));
            model.chat_template()?.render(&messages, Ending::GenerationPrompt)?
        };
        let prompt = model.tokenizer.encode(&text)?;
        let bar = ProgressBar::new((args.n * args.max_new_tokens) as u64);
        bar.set_style(super::bar_style("generating [{bar:40}] {pos}/{len} tokens {per_sec}"));
        let completions = generate(&model.model, &model.tokenizer, &[prompt], &params, |_| bar.inc(1))?;
        bar.finish_and_clear();
        for c in completions {
            if args.json {
                print_line(json!({"sample": c.sample_index, "text": c.text, "tokens": c.token_ids.len(),
                           "finish_reason": format!("{:?}", c.finish_reason).to_lowercase(), "logprobs": c.logprobs}))?;
            } else {
                print_line(format_args!(
                    "--- sample {} ({} tokens, {:?}) ---\n{}",
                    c.sample_index,
                    c.token_ids.len(),
                    c.finish_reason,
                    c.text
                ))?;
            }
        }
        anyhow::Ok(())
    })
    .await?
}

#[derive(Debug, Args)]
pub struct LogprobsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to score (tokenized as is; special tokens like <|im_start|> are recognised).
    #[arg(long, conflicts_with = "ids")]
    text: Option<String>,
    /// Token ids to score, comma separated.
    #[arg(long, value_delimiter = ',')]
    ids: Vec<u32>,
    /// Temperature τ: log-probs are log_softmax(logits / τ).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f64,
}

pub async fn run_logprobs(global: &GlobalArgs, args: LogprobsArgs) -> anyhow::Result<()> {
    let path = args.model.path(global);
    // What can be checked without the model is, before it loads.
    rlt_engine::logprobs::check_temperature(args.temperature)?;
    anyhow::ensure!(
        args.text.is_some() || args.ids.len() >= 2,
        "give at least two tokens (--text or --ids); the first has no log-prob"
    );
    tokio::task::spawn_blocking(move || {
        let model = model_cache::shared().get(&path, WeightMode::F32, &args.model.device)?;
        let ids = match &args.text {
            Some(text) => model.tokenizer.encode(text)?,
            None => args.ids.clone(),
        };
        anyhow::ensure!(ids.len() >= 2, "give at least two tokens (--text or --ids); the first has no log-prob");
        // A long text takes a while (8k tokens: half a minute on two
        // cores): it goes through in passes, with a bar; a short one in one.
        let bar = if ids.len() > PROGRESS_CHUNK {
            ProgressBar::new((ids.len() - 1) as u64)
                .with_style(super::bar_style("scoring [{bar:40}] {pos}/{len} tokens {per_sec}"))
        } else {
            ProgressBar::hidden()
        };
        let lp = sequence_logprobs(&model.model, &ids, args.temperature, PROGRESS_CHUNK, |done, _| {
            bar.set_position(done as u64)
        })
        .context("scoring the tokens")?;
        bar.finish_and_clear();
        let tokens: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let text = model.tokenizer.decode(&[id]).unwrap_or_default();
                json!({"id": id, "text": text, "logprob": if i == 0 { None } else { Some(lp[i - 1]) }})
            })
            .collect();
        let total: f64 = lp.iter().map(|&x| f64::from(x)).sum();
        print_line(serde_json::to_string_pretty(
            &json!({"temperature": args.temperature, "sum_logprob": total, "tokens": tokens}),
        )?)?;
        anyhow::Ok(())
    })
    .await?
}
