//! Batched, seeded sampling of completions.
//!
//! Every (prompt, sample) pair is one row. Rows are decoded together in
//! batches: the distinct prompts of a batch are prefilled once (left-padded
//! together), their caches fanned out to the rows, and then all rows advance
//! one token per step. Each row has its own sampler seeded from
//! `(seed, prompt, sample)`, so a completion does not depend on which other
//! rows shared its batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampling::{Sampled, Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

/// The most completions per prompt (GRPO uses groups of 8 to 64).
pub const MAX_N: usize = 4096;

#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Completions per prompt.
    pub n: usize,
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Generation of a row stops once its text contains one of these.
    pub stop: Vec<String>,
    /// Keep the stop string at the end of the text (the RLT scorer looks
    /// for `<|end_of_explanation|>`); otherwise the text ends before it.
    pub include_stop_str: bool,
    /// Most rows decoded together.
    pub max_batch: usize,
    /// Set from another thread to stop early with [`Error::Cancelled`]; it is
    /// checked before every decoding step, so a job stops within one step.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl GenerateParams {
    /// Checks the settings on their own, before any model is loaded, and
    /// returns the sampling part.
    pub fn validate(&self) -> Result<SamplingParams> {
        let sampling = SamplingParams::new(self.temperature, self.top_p)?;
        if self.n == 0 {
            return Err(Error::InvalidSampling("n must be at least 1".into()));
        }
        // Every completion holds its own row of state; a typo'd n would fill
        // memory before the first token.
        if self.n > MAX_N {
            return Err(Error::InvalidSampling(format!("n must be at most {MAX_N}, got {}", self.n)));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::InvalidSampling("max_new_tokens must be at least 1".into()));
        }
        if self.max_batch == 0 {
            return Err(Error::InvalidSampling("max_batch must be at least 1".into()));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::InvalidSampling("stop strings must not be empty".into()));
        }
        Ok(sampling)
    }
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            n: 1,
            max_new_tokens: 256,
            temperature: 0.7,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            include_stop_str: false,
            max_batch: 16,
            cancel: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-turn / end-of-text token.
    EndOfText,
    /// A stop string appeared.
    StopString,
    /// `max_new_tokens` or the context length was reached.
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub prompt_index: usize,
    pub sample_index: usize,
    pub text: String,
    /// Generated ids, including a final end-of-text token if one stopped it.
    pub token_ids: Vec<u32>,
    /// Log-prob of each generated id under `log_softmax(logits / τ)`.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// One generated token, reported as it is sampled.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent {
    pub prompt_index: usize,
    pub sample_index: usize,
    pub token_id: u32,
    /// Tokens generated so far by this row.
    pub generated: usize,
}

struct Row {
    prompt_index: usize,
    sample_index: usize,
    sampler: Sampler,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    text: String,
    finish: Option<FinishReason>,
}

/// A per-row seed that mixes the user seed with the row's identity
/// (splitmix64 finaliser), so nearby seeds give unrelated streams.
fn row_seed(seed: u64, prompt: usize, sample: usize) -> u64 {
    let mut z = seed
        ^ (prompt as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (sample as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Samples `params.n` completions for each prompt (token ids, already
/// templated). `on_token` sees every sampled token, for progress.
pub fn generate(
    model: &Model,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    mut on_token: impl FnMut(&TokenEvent),
) -> Result<Vec<Completion>> {
    let sampling = params.validate()?;
    let context = model.config().max_position_embeddings;
    let vocab = model.config().vocab_size as u32;
    for p in prompts {
        if p.is_empty() {
            return Err(Error::InvalidInput("empty prompt".into()));
        }
        // Generating needs at least one free position after the prompt.
        if p.len() >= context {
            return Err(Error::ContextOverflow { len: p.len() + 1, context });
        }
        if let Some(bad) = p.iter().find(|&&id| id >= vocab) {
            return Err(Error::InvalidInput(format!("token id {bad} outside the vocabulary of {vocab}")));
        }
    }

    let pairs: Vec<(usize, usize)> = (0..prompts.len()).flat_map(|p| (0..params.n).map(move |s| (p, s))).collect();
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(params.max_batch) {
        let rows = chunk
            .iter()
            .map(|&(p, s)| Row {
                prompt_index: p,
                sample_index: s,
                sampler: Sampler::new(sampling, row_seed(params.seed, p, s)),
                ids: Vec::new(),
                logprobs: Vec::new(),
                text: String::new(),
                finish: None,
            })
            .collect();
        out.extend(decode_batch(model, tokenizer, prompts, rows, params, &mut on_token)?);
    }
    Ok(out)
}

/// The next token of every unfinished row (`None` for finished ones), by
/// batch position. Each row has its own seeded sampler, so sampling the
/// rows in parallel draws exactly what one at a time would; a pass over
/// the vocabulary per row adds up for a group of 16.
fn sample_rows(rows: &mut [Row], active: &[usize], logits: &[f32], vocab: usize) -> Vec<Option<Result<Sampled>>> {
    use rayon::prelude::*;
    let mut slot: Vec<Option<usize>> = vec![None; rows.len()];
    for (pos, &r) in active.iter().enumerate() {
        slot[r] = Some(pos);
    }
    let mut by_pos: Vec<(usize, &mut Row)> =
        rows.iter_mut().enumerate().filter_map(|(r, row)| slot[r].map(|pos| (pos, row))).collect();
    by_pos.sort_unstable_by_key(|(pos, _)| *pos);
    crate::cpu::in_pool(|| {
        by_pos
            .into_par_iter()
            .map(|(pos, row)| row.finish.is_none().then(|| row.sampler.sample(&logits[pos * vocab..][..vocab])))
            .collect()
    })
}

fn decode_batch(
    model: &Model,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    mut rows: Vec<Row>,
    params: &GenerateParams,
    on_token: &mut impl FnMut(&TokenEvent),
) -> Result<Vec<Completion>> {
    let device = model.device();
    let context = model.config().max_position_embeddings;

    // Prefill each distinct prompt once.
    let mut distinct: Vec<usize> = rows.iter().map(|r| r.prompt_index).collect();
    distinct.dedup();
    let longest = distinct.iter().map(|&p| prompts[p].len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(distinct.len() * longest);
    let mut pads = Vec::with_capacity(distinct.len());
    for &p in &distinct {
        let pad = longest - prompts[p].len();
        pads.push(pad);
        ids.extend(std::iter::repeat_n(0u32, pad));
        ids.extend_from_slice(&prompts[p]);
    }
    let ids = Tensor::from_vec(ids, (distinct.len(), longest), device)?;
    let mut prefill_cache = model.new_cache(pads);
    let hidden = model.forward_cached(&ids, &mut prefill_cache)?;
    let last = model.logits(&hidden.narrow(1, longest - 1, 1)?)?.squeeze(1)?;
    let fan_out: Vec<usize> =
        rows.iter().map(|r| distinct.iter().position(|&p| p == r.prompt_index).unwrap_or(0)).collect();
    let mut cache = if fan_out.iter().copied().eq(0..distinct.len()) {
        prefill_cache
    } else {
        prefill_cache.select_rows(&fan_out)?
    };
    let idx = Tensor::from_vec(fan_out.iter().map(|&i| i as u32).collect::<Vec<_>>(), fan_out.len(), device)?;
    // `[active rows, vocab]`, reused from step to step.
    let mut logits: Vec<f32> = last.index_select(&idx, 0)?.flatten_all()?.to_vec1()?;

    // `active[i]` is the row that occupies batch position i of the cache.
    let mut active: Vec<usize> = (0..rows.len()).collect();
    let max_stop = params.stop.iter().map(String::len).max().unwrap_or(0);
    let stop_ids = tokenizer.stop_ids().to_vec();
    loop {
        if params.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cancelled);
        }
        let mut sampled = sample_rows(&mut rows, &active, &logits, model.config().vocab_size);
        let mut next = Vec::with_capacity(active.len());
        for (pos, &r) in active.iter().enumerate() {
            let row = &mut rows[r];
            let Some(sampled) = sampled[pos].take().transpose()? else {
                // A finished row still occupies its batch slot until the
                // next compaction; feed it anything.
                next.push(0);
                continue;
            };
            row.ids.push(sampled.token);
            row.logprobs.push(sampled.logprob);
            on_token(&TokenEvent {
                prompt_index: row.prompt_index,
                sample_index: row.sample_index,
                token_id: sampled.token,
                generated: row.ids.len(),
            });
            if stop_ids.contains(&sampled.token) {
                row.finish = Some(FinishReason::EndOfText);
            } else if !params.stop.is_empty() {
                let before = row.text.len();
                row.text = tokenizer.decode(&row.ids)?;
                // A stop string can only be completed by the new token, so
                // search just the tail the token could have touched.
                let mut from = before.saturating_sub(max_stop);
                while !row.text.is_char_boundary(from) {
                    from -= 1;
                }
                let hit = params
                    .stop
                    .iter()
                    .filter_map(|s| row.text[from..].find(s.as_str()).map(|i| (from + i, s.len())))
                    .min();
                if let Some((at, len)) = hit {
                    let end = if params.include_stop_str { at + len } else { at };
                    row.text.truncate(end);
                    row.finish = Some(FinishReason::StopString);
                }
            }
            let total = prompts[row.prompt_index].len() + row.ids.len();
            if row.finish.is_none() && (row.ids.len() >= params.max_new_tokens || total >= context) {
                row.finish = Some(FinishReason::Length);
            }
            next.push(sampled.token);
        }
        let still: Vec<usize> = (0..active.len()).filter(|&i| rows[active[i]].finish.is_none()).collect();
        if still.is_empty() {
            break;
        }
        // Drop finished rows from the batch once enough have finished that
        // the copy pays for itself in the steps that follow.
        let (input, new_active) = if still.len() * 4 <= active.len() * 3 {
            cache = cache.select_rows(&still)?;
            (still.iter().map(|&i| next[i]).collect::<Vec<_>>(), still.iter().map(|&i| active[i]).collect::<Vec<_>>())
        } else {
            (next, active.clone())
        };
        active = new_active;
        let input = Tensor::from_vec(input, (active.len(), 1), device)?;
        let hidden = model.forward_cached(&input, &mut cache)?;
        model.logits_into(&hidden, &mut logits)?;
    }

    rows.into_iter()
        .map(|r| {
            let finish = r.finish.unwrap_or(FinishReason::Length);
            // Text is tracked during decoding only when stop strings need it.
            let text = match finish {
                FinishReason::StopString => r.text,
                FinishReason::EndOfText => tokenizer.decode(&r.ids[..r.ids.len() - 1])?,
                FinishReason::Length => tokenizer.decode(&r.ids)?,
            };
            Ok(Completion {
                prompt_index: r.prompt_index,
                sample_index: r.sample_index,
                text,
                token_ids: r.ids,
                logprobs: r.logprobs,
                finish_reason: finish,
            })
        })
        .collect()
}
