//! Teacher-forced log-probabilities: `log_softmax(logits / τ)` of each
//! actual next token, as the RLT reward and GRPO use them.

use candle_core::{D, DType, Tensor};

use crate::error::{Error, Result};
use crate::model::{Mode, Model};

/// Positions whose logits are materialised at once. The full `[t, vocab]`
/// logits of a 2048-token sequence take 400 MB in f32; 128 rows take 25 MB,
/// which also stays under glibc's largest mmap threshold (32 MB), so the
/// buffer is recycled instead of being mapped and page-faulted anew.
const LOGIT_CHUNK: usize = 128;

/// Token budget (rows × padded length) of one forward batch. On CPU a batch
/// gains little over a long single sequence, and padding costs compute, so
/// batches stay modest.
const BATCH_TOKENS: usize = 4096;

/// Log-probs need a real distribution: τ of at least
/// [`crate::sampling::GREEDY_BELOW`] (below it `1/τ` times a logit gap
/// leaves f32's range), and finite.
pub fn check_temperature(temperature: f64) -> Result<()> {
    let least = crate::sampling::GREEDY_BELOW;
    if !(temperature.is_finite() && temperature >= least) {
        return Err(Error::InvalidSampling(format!(
            "temperature must be a finite number >= {least} for log-probs, got {temperature}"
        )));
    }
    Ok(())
}

/// `log_softmax(logits / τ)` at `targets`, for logits `[n, vocab]` and
/// targets `[n]` (u32). Built from differentiable ops, so it also serves
/// training graphs.
pub fn select_logprobs(logits: &Tensor, targets: &Tensor, temperature: f64) -> Result<Tensor> {
    let scaled = (logits.to_dtype(DType::F32)? / temperature)?;
    let max = scaled.max_keepdim(D::Minus1)?;
    let shifted = scaled.broadcast_sub(&max)?;
    let log_norm = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    Ok((picked - log_norm)?.squeeze(D::Minus1)?)
}

/// Log-probs `[b, t-1]` of a left-padded batch: entry `[r, j]` is the
/// log-prob of column `j+1` given columns `..=j`. Entries whose target is a
/// padding column are meaningless. The graph is kept, so with a trainable
/// model the result can be backpropagated.
pub fn batch_logprobs(model: &Model, input_ids: &Tensor, left_pad: &[usize], temperature: f64) -> Result<Tensor> {
    check_temperature(temperature)?;
    let (b, t) = input_ids.dims2()?;
    if t < 2 {
        return Ok(Tensor::zeros((b, 0), DType::F32, model.device())?);
    }
    if let Some(lp) = model.cpu_logprobs(input_ids, left_pad, temperature) {
        return lp;
    }
    let hidden = model.forward_hidden(input_ids, left_pad)?;
    let mut rows = Vec::with_capacity(b);
    for r in 0..b {
        let h = hidden.get(r)?.narrow(0, 0, t - 1)?;
        let targets = input_ids.get(r)?.narrow(0, 1, t - 1)?;
        rows.push(hidden_logprobs(model, &h, &targets, temperature)?);
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// Log-probs `[n]` of `targets [n]` after hidden states `[n, hidden]`,
/// their logits materialised [`LOGIT_CHUNK`] positions at a time.
fn hidden_logprobs(model: &Model, h: &Tensor, targets: &Tensor, temperature: f64) -> Result<Tensor> {
    let n = targets.dim(0)?;
    let fused = model.mode() == Mode::Inference && model.device().is_cpu() && model.dtype() == DType::F32;
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = LOGIT_CHUNK.min(n - start);
        let logits = model.logits(&h.narrow(0, start, len)?)?;
        let targets = targets.narrow(0, start, len)?;
        parts.push(if fused {
            let lp = crate::kernels::select_logprobs_cpu(&logits, &targets.to_vec1::<u32>()?, temperature as f32)?;
            Tensor::from_vec(lp, len, model.device())?
        } else {
            select_logprobs(&logits, &targets, temperature)?
        });
        start += len;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Refuses a sequence longer than the context or with an id outside the
/// vocabulary.
fn check_sequence(model: &Model, s: &[u32]) -> Result<()> {
    let context = model.config().max_position_embeddings;
    let vocab = model.config().vocab_size as u32;
    if s.len() > context {
        return Err(Error::ContextOverflow { len: s.len(), context });
    }
    if let Some(bad) = s.iter().find(|&&id| id >= vocab) {
        return Err(Error::InvalidInput(format!("token id {bad} outside the vocabulary of {vocab}")));
    }
    Ok(())
}

/// Positions per forward pass of [`sequence_logprobs`]: a few seconds
/// each on two cores.
pub const PROGRESS_CHUNK: usize = 512;

/// [`token_logprobs`] of one sequence, `chunk` positions (at least 2) per
/// forward pass through the KV cache, calling `progress(done, total)` (positions
/// scored so far, and in all) after each pass: scoring 8k tokens takes
/// half a minute on two cores, and a caller can show how far it has got.
/// A sequence of at most `chunk` tokens is scored in one pass, exactly as
/// [`token_logprobs`] scores it. A longer one gives the same values to
/// float rounding in f32 (each query's attention adds the same keys, in
/// blocks split at other places); with quantized weights such a last-bit
/// difference can tip an activation's 8-bit rounding, and a few positions
/// then move by up to a few tenths.
pub fn sequence_logprobs(
    model: &Model,
    ids: &[u32],
    temperature: f64,
    chunk: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<f32>> {
    let (chunk, total) = (chunk.max(2), ids.len().saturating_sub(1));
    if ids.len() <= chunk {
        let lp = token_logprobs(model, &[ids.to_vec()], temperature)?.remove(0);
        progress(total, total);
        return Ok(lp);
    }
    // token_logprobs' checks, for the passes.
    check_temperature(temperature)?;
    check_sequence(model, ids)?;
    let mut cache = model.new_cache(vec![0]);
    let mut out = Vec::with_capacity(total);
    for start in (0..ids.len()).step_by(chunk) {
        let end = (start + chunk).min(ids.len());
        let input = Tensor::new(&ids[start..end], model.device())?.unsqueeze(0)?;
        let hidden = model.forward_cached(&input, &mut cache)?;
        // Positions whose next token exists: all but the sequence's last.
        let scored = end.min(total) - start;
        if scored > 0 {
            let targets = Tensor::new(&ids[start + 1..start + 1 + scored], model.device())?;
            let h = hidden.get(0)?.narrow(0, 0, scored)?;
            out.extend(hidden_logprobs(model, &h, &targets, temperature)?.to_vec1::<f32>()?);
        }
        progress(out.len(), total);
    }
    Ok(out)
}

/// Log-probs of every token after the first, for each sequence: result
/// `i` has `sequences[i].len() - 1` entries. Sequences are batched by
/// length and scored without a graph.
pub fn token_logprobs(model: &Model, sequences: &[Vec<u32>], temperature: f64) -> Result<Vec<Vec<f32>>> {
    check_temperature(temperature)?;
    for s in sequences {
        check_sequence(model, s)?;
    }
    // Longest first, so each batch pads to its own first length.
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sequences[i].len()));
    let mut out = vec![Vec::new(); sequences.len()];
    let mut i = 0;
    while i < order.len() {
        let longest = sequences[order[i]].len().max(1);
        let rows = (BATCH_TOKENS / longest).max(1);
        let batch: Vec<usize> = order[i..(i + rows).min(order.len())].to_vec();
        i += batch.len();
        if longest < 2 {
            continue;
        }
        let mut ids = Vec::with_capacity(batch.len() * longest);
        let mut pads = Vec::with_capacity(batch.len());
        for &j in &batch {
            let s = &sequences[j];
            let pad = longest - s.len();
            pads.push(pad);
            ids.extend(std::iter::repeat_n(0u32, pad));
            ids.extend_from_slice(s);
        }
        let ids = Tensor::from_vec(ids, (batch.len(), longest), model.device())?;
        let lp = batch_logprobs(model, &ids, &pads, temperature)?.to_vec2::<f32>()?;
        for ((&j, row), pad) in batch.iter().zip(lp).zip(pads) {
            // Targets start at column pad + 1, i.e. row index pad.
            out[j] = row[pad.min(row.len())..].to_vec();
        }
    }
    Ok(out)
}
