//! Choosing the next token: temperature, nucleus (top-p) and a seed, in
//! one small type like candle's `LogitsProcessor`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::kernels;

/// Temperatures below this decode greedily, as in vLLM: `1/τ` would
/// overflow f32 (τ < 3e-39) long before, and the distribution is already
/// a point mass.
pub const GREEDY_BELOW: f64 = 1e-5;

/// Validated sampling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy decoding, and so does anything below
    /// [`GREEDY_BELOW`].
    pub temperature: f64,
    /// Keep the smallest set of most likely tokens whose probability sums
    /// to at least `top_p` (1.0 keeps all).
    pub top_p: f64,
}

impl SamplingParams {
    pub fn new(temperature: f64, top_p: f64) -> Result<Self> {
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(Error::InvalidSampling(format!("temperature must be a finite number >= 0, got {temperature}")));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::InvalidSampling(format!("top_p must be in (0, 1], got {top_p}")));
        }
        Ok(Self { temperature, top_p })
    }
}

/// A seeded sampler. The same seed and logits give the same tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    // Scratch buffers reused across tokens.
    probs: Vec<f32>,
    order: Vec<u32>,
}

/// A sampled token and its log-prob.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// `log_softmax(logits / τ)` of the token over the whole vocabulary,
    /// before top-p truncation: the policy log-prob GRPO expects. Greedy
    /// decoding reports it at τ = 1.
    pub logprob: f32,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self { params, rng: StdRng::seed_from_u64(seed), probs: Vec::new(), order: Vec::new() }
    }

    pub fn params(&self) -> SamplingParams {
        self.params
    }

    pub fn sample(&mut self, logits: &[f32]) -> Result<Sampled> {
        if logits.is_empty() {
            return Err(Error::InvalidInput("empty logits".into()));
        }
        let greedy = self.params.temperature < GREEDY_BELOW;
        let inv_t = if greedy { 1.0 } else { (1.0 / self.params.temperature) as f32 };
        // A vocabulary-sized pass per row and token: vectorised, as the
        // teacher-forced log-probs are, so both agree on the normaliser.
        let max = kernels::max_of(logits);
        if !max.is_finite() {
            return Err(Error::InvalidInput("logits contain no finite value".into()));
        }
        self.probs.resize(logits.len(), 0.0);
        let sum = kernels::exp_sum_to(logits, &mut self.probs, max, inv_t) as f64;
        let log_sum = sum.ln() as f32;
        let logprob_of = |tok: usize| (logits[tok] - max) * inv_t - log_sum;

        if greedy {
            let token = argmax(logits);
            return Ok(Sampled { token: token as u32, logprob: logprob_of(token) });
        }

        let token = if self.params.top_p < 1.0 {
            // Only the head of the distribution can be kept, so select a
            // growing top-k in linear time instead of sorting the vocabulary.
            let probs = &self.probs;
            let limit = self.params.top_p * sum;
            let desc = |a: &u32, b: &u32| probs[*b as usize].total_cmp(&probs[*a as usize]).then(a.cmp(b));
            let n = logits.len();
            let mut k = 64.min(n);
            loop {
                self.order.clear();
                self.order.extend(0..n as u32);
                if k < n {
                    self.order.select_nth_unstable_by(k - 1, desc);
                    self.order.truncate(k);
                }
                self.order.sort_unstable_by(desc);
                let head: f64 = self.order.iter().map(|&t| probs[t as usize] as f64).sum();
                if head >= limit || k == n {
                    break;
                }
                k = (k * 4).min(n);
            }
            // transformers' TopPLogitsWarper keeps a token while the mass
            // before it is below top_p, and always keeps the first.
            let mut kept = 0usize;
            let mut mass = 0f64;
            for &t in &self.order {
                if kept > 0 && mass >= limit {
                    break;
                }
                mass += self.probs[t as usize] as f64;
                kept += 1;
            }
            let u = self.rng.random::<f64>() * mass;
            let mut acc = 0f64;
            let mut chosen = self.order[kept - 1];
            for &t in &self.order[..kept] {
                acc += self.probs[t as usize] as f64;
                if acc > u {
                    chosen = t;
                    break;
                }
            }
            chosen as usize
        } else {
            // Drawn against the same f64 sums the search adds up.
            let u = self.rng.random::<f64>() * sum_f64(&self.probs);
            inverse_cdf(&self.probs, u).unwrap_or_else(|| argmax(logits))
        };
        Ok(Sampled { token: token as u32, logprob: logprob_of(token) })
    }
}

/// The first token whose cumulative probability passes `u`: whole blocks
/// are skipped on their sums and only the block that passes `u` is walked
/// token by token.
fn inverse_cdf(probs: &[f32], u: f64) -> Option<usize> {
    const BLOCK: usize = 256;
    let mut acc = 0f64;
    for (b, block) in probs.chunks(BLOCK).enumerate() {
        let s = sum_f64(block);
        if acc + s <= u {
            acc += s;
            continue;
        }
        // The walk adds in another order than the block sum, so a block
        // that does not pass after all hands on to the next.
        for (j, &p) in block.iter().enumerate() {
            acc += p as f64;
            if acc > u && p > 0.0 {
                return Some(b * BLOCK + j);
            }
        }
    }
    None
}

/// `Σ xs` in f64 (eight lanes, so it vectorises).
fn sum_f64(xs: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lanes[i] += c[i] as f64;
        }
    }
    lanes.iter().sum::<f64>() + chunks.remainder().iter().map(|&x| x as f64).sum::<f64>()
}

fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_params() {
        assert!(SamplingParams::new(-0.1, 1.0).is_err());
        assert!(SamplingParams::new(f64::NAN, 1.0).is_err());
        assert!(SamplingParams::new(0.7, 0.0).is_err());
        assert!(SamplingParams::new(0.7, 1.5).is_err());
        assert!(SamplingParams::new(0.0, 1.0).is_ok());
    }

    #[test]
    fn greedy_picks_argmax_with_its_logprob() {
        let mut s = Sampler::new(SamplingParams::new(0.0, 1.0).unwrap(), 0);
        let out = s.sample(&[0.0, 2.0, 1.0]).unwrap();
        assert_eq!(out.token, 1);
        let expected = 2.0 - (1f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((out.logprob - expected).abs() < 1e-6);
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // p = [0.6, 0.3, 0.1]: top_p 0.5 keeps only token 0.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut s = Sampler::new(SamplingParams::new(1.0, 0.5).unwrap(), 3);
        for _ in 0..200 {
            assert_eq!(s.sample(&logits).unwrap().token, 0);
        }
        // top_p 0.85 keeps tokens 0 and 1, never 2.
        let mut s = Sampler::new(SamplingParams::new(1.0, 0.85).unwrap(), 3);
        let mut seen = [0; 3];
        for _ in 0..2000 {
            seen[s.sample(&logits).unwrap().token as usize] += 1;
        }
        assert_eq!(seen[2], 0);
        assert!(seen[1] > 400 && seen[0] > 900, "{seen:?}");
    }

    #[test]
    fn inverse_cdf_matches_a_walk_over_every_token() {
        let mut rng = StdRng::seed_from_u64(5);
        // Zeros included: a token of probability 0 is never chosen.
        let probs: Vec<f32> = (0..1000).map(|i| if i % 7 == 0 { 0.0 } else { rng.random::<f32>() }).collect();
        let total: f64 = probs.iter().map(|&p| p as f64).sum();
        for k in 0..500 {
            let u = total * k as f64 / 500.0;
            let mut acc = 0f64;
            let walk = probs.iter().position(|&p| {
                acc += p as f64;
                acc > u && p > 0.0
            });
            assert_eq!(inverse_cdf(&probs, u), walk, "u = {u}");
        }
        assert_eq!(inverse_cdf(&probs, total * 2.0), None);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams::new(0.9, 0.95).unwrap(), seed);
            (0..30).map(|_| s.sample(&logits).unwrap().token).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
