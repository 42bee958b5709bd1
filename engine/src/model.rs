//! The Llama/Qwen2 decoder, in the candle-transformers style: a `Config`,
//! small modules with `new(&cfg, vb)` and `forward`.
//!
//! Shapes and conventions:
//! - A batch is `input_ids: [b, t]` (u32). Rows of different lengths are
//!   **left-padded**: row `r` has `left_pad[r]` padding columns before its
//!   tokens. Left padding keeps every row's newest token in the last column,
//!   so incremental decoding appends one column for all rows at once. Padding
//!   columns are masked out as keys, and their positions are counted from the
//!   first real token, so a padded row computes exactly what it would alone.
//! - Every position's hidden state (and logits) is returned, because scoring
//!   and training need teacher-forced log-probs at every token.
//! - Rotary embeddings use the Hugging Face "rotate half" layout. GGUF files
//!   from llama.cpp store Llama q/k rows permuted for the interleaved layout;
//!   the GGUF loader undoes that permutation so there is one RoPE here.
//! - [`Mode::Training`] builds a graph of plain tensor ops only, because the
//!   fused kernels in `candle_nn::ops` and `candle_nn::rotary_emb` have no
//!   backward pass. [`Mode::Inference`] uses the fused kernels and fuses the
//!   q/k/v and gate/up projections into single matmuls.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::cpu::{self, CpuLayer, CpuLinear, CpuModel, Embedding, GateUp, HostKv};
use crate::error::{Error, Result};
use crate::kernels::{Q4MatMul, Q4Matrix, Q8MatMul, Q8Matrix};
use crate::sgemm::PackedB;

/// Model families this decoder implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Qwen2,
}

impl Architecture {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "llama" | "llamaforcausallm" => Ok(Self::Llama),
            "qwen2" | "qwen2forcausallm" => Ok(Self::Qwen2),
            _ => Err(Error::UnsupportedArchitecture(name.to_string())),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }
}

/// The longest context the engine accepts: 2^24 positions.
pub const MAX_CONTEXT: usize = 1 << 24;

/// RoPE frequency scaling, as transformers computes each `rope_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    Llama3(Llama3RopeScaling),
    Yarn(YarnRopeScaling),
}

/// Llama 3 style frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// YaRN: frequencies blended from the interpolated (divided by `factor`)
/// to the original ones along a ramp over the dimensions, between the
/// ones that turn `beta_fast` and `beta_slow` times in the original
/// context; cos and sin are multiplied by `attention_factor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct YarnRopeScaling {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub attention_factor: f64,
    /// Round the ramp's ends outwards to whole dimensions.
    pub truncate: bool,
}

impl YarnRopeScaling {
    /// The defaults transformers and llama.cpp fill in: β 32 and 1, the
    /// ramp's ends rounded, and an attention factor of `0.1·ln(factor) + 1`.
    pub fn new(factor: f64, original_max_position_embeddings: usize) -> Self {
        Self {
            factor,
            original_max_position_embeddings,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: yarn_mscale(factor, 1.0),
            truncate: true,
        }
    }

    /// Per-frequency weights of the original (unscaled) frequencies: 1
    /// below the ramp's low end (fast dimensions keep their frequency), 0
    /// above its high end.
    fn extrapolation(&self, theta: f64, head_dim: usize) -> Vec<f64> {
        let dim = head_dim as f64;
        let old_ctx = self.original_max_position_embeddings as f64;
        // The dimension whose frequency turns `turns` times in the
        // original context.
        let dim_for = |turns: f64| dim * (old_ctx / (turns * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
        let (mut low, mut high) = (dim_for(self.beta_fast), dim_for(self.beta_slow));
        if self.truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
        if low == high {
            high += 0.001;
        }
        (0..head_dim / 2).map(|i| 1.0 - ((i as f64 - low) / (high - low)).clamp(0.0, 1.0)).collect()
    }
}

/// YaRN's attention scale for a context grown by `scale`.
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 { 1.0 } else { 0.1 * mscale * scale.ln() + 1.0 }
}

/// `rope_type = "yarn"` as a config states it, before transformers' defaults.
#[derive(Deserialize)]
struct HfYarn {
    factor: Option<f64>,
    original_max_position_embeddings: usize,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    attention_factor: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    truncate: Option<bool>,
}

impl HfYarn {
    /// transformers' `_compute_yarn_parameters`: a null factor is the
    /// context's growth over the original, and zero β or mscale counts as
    /// absent.
    fn resolve(self, max_position_embeddings: usize) -> YarnRopeScaling {
        let original = self.original_max_position_embeddings;
        let factor = self.factor.unwrap_or(max_position_embeddings as f64 / original.max(1) as f64);
        let defaults = YarnRopeScaling::new(factor, original);
        let given = |x: Option<f64>| x.filter(|v| *v != 0.0);
        let attention_factor =
            self.attention_factor.unwrap_or(match (given(self.mscale), given(self.mscale_all_dim)) {
                (Some(m), Some(all)) => yarn_mscale(factor, m) / yarn_mscale(factor, all),
                _ => defaults.attention_factor,
            });
        YarnRopeScaling {
            beta_fast: given(self.beta_fast).unwrap_or(defaults.beta_fast),
            beta_slow: given(self.beta_slow).unwrap_or(defaults.beta_slow),
            attention_factor,
            truncate: self.truncate.unwrap_or(defaults.truncate),
            ..defaults
        }
    }
}

impl RopeScaling {
    /// The context a scaled model accepts. YaRN's is its original context
    /// times its factor, as vLLM derives it: Qwen2.5's model card adds
    /// YaRN to a config that keeps the original context as
    /// `max_position_embeddings`. Linear and Llama 3 configs state the
    /// extended context themselves (deepseek-coder: 16,384 with a linear
    /// factor of 4), as transformers and llama.cpp take it.
    pub(crate) fn context(&self, max_position_embeddings: usize) -> usize {
        match self {
            Self::Yarn(y) => {
                let grown = y.original_max_position_embeddings as f64 * y.factor;
                // Past usize (a garbage factor), validation refuses the context.
                if grown.is_finite() { max_position_embeddings.max(grown as usize) } else { usize::MAX }
            }
            Self::Linear { .. } | Self::Llama3(_) => max_position_embeddings,
        }
    }

    /// Checks the parameters, naming `key` (where the config keeps them).
    pub(crate) fn validate(&self, key: &str) -> Result<()> {
        let positive = |name: &str, x: f64| {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                Err(Error::metadata(key, format!("{name} must be a number > 0, got {x}")))
            }
        };
        match self {
            Self::Linear { factor } => positive("factor", *factor),
            Self::Llama3(s) => {
                positive("factor", s.factor)?;
                positive("low_freq_factor", s.low_freq_factor)?;
                positive("original_max_position_embeddings", s.original_max_position_embeddings as f64)?;
                if s.high_freq_factor > s.low_freq_factor {
                    Ok(())
                } else {
                    Err(Error::metadata(
                        key,
                        format!(
                            "llama3 scaling needs high_freq_factor > low_freq_factor, got {} and {}",
                            s.high_freq_factor, s.low_freq_factor
                        ),
                    ))
                }
            }
            Self::Yarn(y) => {
                positive("factor", y.factor)?;
                positive("original_max_position_embeddings", y.original_max_position_embeddings as f64)?;
                positive("beta_fast", y.beta_fast)?;
                positive("beta_slow", y.beta_slow)?;
                positive("attention_factor", y.attention_factor)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// The context length: the longest sequence the model accepts.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections (Qwen2 has it, Llama normally not).
    pub attention_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias` puts one
    /// there too; Qwen2 never has it).
    #[serde(default)]
    pub output_bias: bool,
    pub rope_scaling: Option<RopeScaling>,
    /// Per-frequency divisors of RoPE's inverse frequencies, as llama.cpp's
    /// converter stores Llama 3's scaling in a GGUF (`rope_freqs.weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_freq_factors: Option<Vec<f32>>,
}

/// The subset of a Hugging Face `config.json` this decoder reads.
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    /// Phi-3 style: the pretraining context beside the RoPE settings.
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5 writes `rope_theta` and the scaling here instead.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    max_window_layers: Option<usize>,
    /// transformers 5: `full_attention` or `sliding_attention` per layer.
    #[serde(default)]
    layer_types: Option<Vec<String>>,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    4096
}

/// The RoPE settings of a config, and the key they came from. transformers
/// 4 writes `rope_theta` and `rope_scaling` at the top level, transformers 5
/// both inside `rope_parameters`; like transformers 5, a legacy
/// `rope_scaling` wins when both are there (a user adding YaRN to a saved
/// config, as Qwen2.5's model card says, writes `rope_scaling`).
fn hf_rope(hf: &HfConfig) -> Result<(&'static str, Option<&serde_json::Value>)> {
    // Anything but an object or null would otherwise be read as "no
    // scaling", dropping the model's real one.
    for (key, v) in [("rope_scaling", &hf.rope_scaling), ("rope_parameters", &hf.rope_parameters)] {
        if let Some(v) = v.as_ref().filter(|v| !(v.is_null() || v.is_object())) {
            return Err(Error::metadata(format!("config.json {key}"), format!("must be an object, got {v}")));
        }
    }
    if let Some(v) = hf.rope_scaling.as_ref().filter(|v| !v.is_null()) {
        return Ok(("rope_scaling", Some(v)));
    }
    match &hf.rope_parameters {
        Some(v @ serde_json::Value::Object(map)) => {
            // Per layer type, for models that mix attention kinds.
            if map.contains_key("sliding_attention") {
                return Err(Error::metadata(
                    "config.json rope_parameters",
                    "RoPE settings per layer type (sliding attention) are not supported",
                ));
            }
            Ok(("rope_parameters", Some(map.get("full_attention").unwrap_or(v))))
        }
        _ => Ok(("rope_scaling", None)),
    }
}

/// Whether any layer of a Qwen2 config attends through a sliding window
/// narrower than the context, as transformers decides it.
fn hf_slides(hf: &HfConfig) -> bool {
    let window = match (hf.use_sliding_window, hf.sliding_window) {
        // transformers 5 keeps the window only when it is used.
        (Some(false), _) | (_, None) => return false,
        (_, Some(w)) => w,
    };
    if window >= hf.max_position_embeddings {
        return false;
    }
    match &hf.layer_types {
        Some(types) => types.iter().any(|t| t != "full_attention"),
        // transformers 4: layers from max_window_layers on slide.
        None => hf.use_sliding_window == Some(true) && hf.num_hidden_layers > hf.max_window_layers.unwrap_or(28),
    }
}

impl Config {
    /// Parses a Hugging Face `config.json` of the Llama or Qwen2 family.
    pub fn from_hf_json(json: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::metadata("config.json", e.to_string()))?;
        if !value.is_object() {
            return Err(Error::metadata("config.json", "must be a JSON object"));
        }
        let hf: HfConfig = serde_json::from_value(value).map_err(|e| Error::metadata("config.json", e.to_string()))?;
        let arch_name = hf
            .model_type
            .clone()
            .or_else(|| hf.architectures.first().cloned())
            .ok_or_else(|| Error::metadata("config.json", "no model_type or architectures"))?;
        let architecture = Architecture::parse(&arch_name)?;
        let unsupported = |key: &str, what: String| Err(Error::metadata(format!("config.json {key}"), what));
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| !matches!(*a, "silu" | "swish")) {
            return unsupported("hidden_act", format!("activation `{act}` is not supported (only silu)"));
        }
        // Only transformers' Llama reads `mlp_bias`, only its Qwen2 slides.
        if architecture == Architecture::Llama && hf.mlp_bias == Some(true) {
            return unsupported("mlp_bias", "MLP biases are not supported".into());
        }
        if architecture == Architecture::Qwen2 && hf_slides(&hf) {
            return unsupported(
                "use_sliding_window",
                "sliding-window attention (layer_types with sliding_attention) is not supported".into(),
            );
        }
        let (rope_key, rope) = hf_rope(&hf)?;
        let rope_theta = rope.and_then(|v| v.get("rope_theta")).and_then(|t| t.as_f64()).unwrap_or(hf.rope_theta);
        let rope_scaling = match rope {
            None => None,
            Some(v) => {
                let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|k| k.as_str()).unwrap_or("default");
                // transformers' standardize_rope_params: the scalings that
                // read a pretraining context take the config's top-level one
                // first, then their own, then the config's context.
                let mut v = v.clone();
                if let (true, Some(map)) = (matches!(kind, "llama3" | "yarn"), v.as_object_mut()) {
                    let key = "original_max_position_embeddings".to_string();
                    if let Some(top) = hf.original_max_position_embeddings {
                        map.insert(key, top.into());
                    } else {
                        map.entry(key).or_insert(hf.max_position_embeddings.into());
                    }
                }
                let parse_err =
                    |e: serde_json::Error| Error::metadata(format!("config.json {rope_key}"), e.to_string());
                match kind {
                    "llama3" => Some(RopeScaling::Llama3(serde_json::from_value(v.clone()).map_err(parse_err)?)),
                    "linear" => {
                        let factor = v.get("factor").and_then(|f| f.as_f64()).ok_or_else(|| {
                            Error::metadata(format!("config.json {rope_key}"), "linear scaling needs a number `factor`")
                        })?;
                        Some(RopeScaling::Linear { factor })
                    }
                    // transformers requires the key, and reads null as "the
                    // context's growth".
                    "yarn" if v.get("factor").is_none() => {
                        return unsupported(rope_key, "yarn scaling needs a `factor`".into());
                    }
                    "yarn" => {
                        let yarn: HfYarn = serde_json::from_value(v.clone()).map_err(parse_err)?;
                        Some(RopeScaling::Yarn(yarn.resolve(hf.max_position_embeddings)))
                    }
                    // "default" means no scaling in transformers.
                    "default" => None,
                    other => return unsupported(rope_key, format!("unsupported rope scaling `{other}`")),
                }
            }
        };
        if let Some(s) = &rope_scaling {
            s.validate(&format!("config.json {rope_key}"))?;
        }
        let cfg = Config {
            architecture,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: match hf.head_dim {
                Some(d) => d,
                None if hf.num_attention_heads > 0 && !hf.hidden_size.is_multiple_of(hf.num_attention_heads) => {
                    return unsupported(
                        "hidden_size",
                        format!(
                            "{} is not a multiple of num_attention_heads {} (and no head_dim is given)",
                            hf.hidden_size, hf.num_attention_heads
                        ),
                    );
                }
                None => hf.hidden_size / hf.num_attention_heads.max(1),
            },
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta,
            max_position_embeddings: rope_scaling
                .as_ref()
                .map_or(hf.max_position_embeddings, |s| s.context(hf.max_position_embeddings)),
            tie_word_embeddings: hf.tie_word_embeddings,
            // transformers' Qwen2 always has q/k/v biases and never an
            // output one; its Llama puts `attention_bias` on all four.
            attention_bias: architecture == Architecture::Qwen2 || hf.attention_bias == Some(true),
            output_bias: architecture == Architecture::Llama && hf.attention_bias == Some(true),
            rope_scaling,
            rope_freq_factors: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::metadata("config", reason));
        if self.num_attention_heads == 0 {
            return bad("zero attention heads".into());
        }
        if self.num_key_value_heads == 0 {
            return bad("zero key/value heads".into());
        }
        // A negative θ or ε runs and gives NaN log-probs: refuse it instead.
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::metadata("rope_theta", format!("must be a number > 0, got {}", self.rope_theta)));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(Error::metadata("rms_norm_eps", format!("must be a number >= 0, got {}", self.rms_norm_eps)));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "{} attention heads is not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad("empty model dimensions".into());
        }
        if let Some(f) = &self.rope_freq_factors {
            let rope_freqs = |reason: String| Err(Error::metadata("rope_freqs.weight", reason));
            if f.len() != self.head_dim / 2 {
                return rope_freqs(format!("{} values, head_dim / 2 = {} expected", f.len(), self.head_dim / 2));
            }
            if let Some(x) = f.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return rope_freqs(format!("divisor {x} is not a positive number"));
            }
            if self.rope_scaling.is_some() {
                return rope_freqs("given together with rope_scaling (the frequencies would be scaled twice)".into());
            }
        }
        if let Some(s) = &self.rope_scaling {
            s.validate("rope_scaling")?;
        }
        // The RoPE tables hold every position: a garbage scaling factor must
        // not ask for more than any model has (Qwen2.5-1M: about 1M).
        if self.max_position_embeddings > MAX_CONTEXT {
            return Err(Error::metadata(
                "max_position_embeddings",
                format!(
                    "a context of {} positions is beyond the {MAX_CONTEXT} the engine supports",
                    self.max_position_embeddings
                ),
            ));
        }
        Ok(())
    }
}

/// Which graph the model builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fused kernels and fused projections; no backward.
    Inference,
    /// Plain ops only, each weight used as loaded so gradients reach the
    /// `Var`s of a `VarMap`.
    Training,
}

/// A projection `x @ w.T + b`, dense (any float dtype) or quantized.
#[derive(Debug, Clone)]
enum Linear {
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
    },
    /// The engine's own 8-bit CPU kernel (see `kernels::Q8Matrix`).
    Q8 {
        weight: Arc<Q8Matrix>,
        bias: Option<Tensor>,
    },
    /// The engine's own CPU kernel for GGUF Q4_1 blocks.
    Q4 {
        weight: Arc<Q4Matrix>,
        bias: Option<Tensor>,
    },
}

impl Linear {
    /// This projection with its weight requantized for the Q8 CPU kernel.
    fn into_q8(self) -> Result<Linear> {
        match self {
            Linear::Dense { weight, bias } => {
                Ok(Linear::Q8 { weight: Arc::new(Q8Matrix::from_tensor(&weight)?), bias })
            }
            other => Ok(other),
        }
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (out, bias) = match self {
            Linear::Dense { weight, bias } => {
                // Flatten to one matmul so gemm sees a single tall lhs rather
                // than a batch of small ones.
                let dims = xs.dims().to_vec();
                let k = *dims.last().unwrap_or(&0);
                let rows = xs.elem_count() / k.max(1);
                let y = xs.reshape((rows, k))?.matmul(&weight.t()?)?;
                let mut out_dims = dims;
                *out_dims.last_mut().unwrap() = weight.dim(0)?;
                (y.reshape(out_dims)?, bias)
            }
            Linear::Quantized { weight, bias } => (weight.forward(&xs.contiguous()?)?, bias),
            Linear::Q8 { weight, bias } => (xs.contiguous()?.apply_op1_no_bwd(&Q8MatMul(weight.clone()))?, bias),
            Linear::Q4 { weight, bias } => (xs.contiguous()?.apply_op1_no_bwd(&Q4MatMul(weight.clone()))?, bias),
        };
        match bias {
            Some(b) => out.broadcast_add(b),
            None => Ok(out),
        }
    }
}

/// Where the weights come from. Tensor names are Hugging Face names
/// (`model.layers.0.self_attn.q_proj.weight`), whatever the file format.
pub enum Weights<'a> {
    /// Dense weights: safetensors, dequantized GGUF, or a `VarMap` for training.
    Dense(VarBuilder<'a>),
    /// Dense weights whose projections are requantized to 8-bit blocks for
    /// the engine's CPU kernel (fast decoding on CPUs with AVX2).
    DenseQ8(VarBuilder<'a>),
    /// Quantized matrices for the projections; norms, biases and the token
    /// embedding are taken from `dense` (dequantized, small).
    Quantized { matrices: &'a HashMap<String, Arc<QTensor>>, dense: VarBuilder<'a> },
}

impl Weights<'_> {
    fn dense(&self) -> &VarBuilder<'_> {
        match self {
            Weights::Dense(vb) | Weights::DenseQ8(vb) => vb,
            Weights::Quantized { dense, .. } => dense,
        }
    }

    fn tensor(&self, name: &str, shape: (usize, usize)) -> Result<Tensor> {
        Ok(self.dense().get(shape, name)?)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        Ok(self.dense().get(len, name)?)
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let bias = if bias { Some(self.vector(&format!("{prefix}.bias"), out)?) } else { None };
        let name = format!("{prefix}.weight");
        match self {
            Weights::Dense(vb) | Weights::DenseQ8(vb) => Ok(Linear::Dense { weight: vb.get((out, inp), &name)?, bias }),
            Weights::Quantized { matrices, dense } => {
                let q = matrices.get(&name).ok_or_else(|| Error::metadata(&name, "tensor missing"))?;
                if q.shape().dims() != [out, inp] {
                    return Err(Error::metadata(
                        &name,
                        format!("shape {:?}, expected [{out}, {inp}]", q.shape().dims()),
                    ));
                }
                if !(dense.device().is_cpu() && Q8Matrix::supported()) {
                    return Ok(Linear::Quantized { weight: QMatMul::from_arc(q.clone())?, bias });
                }
                // On CPU the engine's kernels take the blocks as stored
                // (Q4_1, Q8_0); other formats are requantized to 8 bits.
                let rows: Vec<usize> = (0..out).collect();
                Ok(match q.dtype() {
                    GgmlDType::Q4_1 => {
                        Linear::Q4 { weight: Arc::new(Q4Matrix::from_q4_1_blocks(&q.data()?, out, inp, &rows)?), bias }
                    }
                    GgmlDType::Q8_0 => {
                        Linear::Q8 { weight: Arc::new(Q8Matrix::from_q8_0_blocks(&q.data()?, out, inp, &rows)?), bias }
                    }
                    _ => Linear::Q8 { weight: Arc::new(Q8Matrix::from_tensor(&q.dequantize(dense.device())?)?), bias },
                })
            }
        }
    }

    fn is_quantized(&self) -> bool {
        matches!(self, Weights::Quantized { .. } | Weights::DenseQ8(_))
    }

    /// Applies the weight format's last step to a (possibly fused) projection.
    fn finish(&self, l: Linear) -> Result<Linear> {
        match self {
            Weights::DenseQ8(_) => l.into_q8(),
            _ => Ok(l),
        }
    }
}

/// Concatenates projections of one kind along the output dimension so
/// that one matmul computes them all (q/k/v, gate/up). Mixed kinds and
/// candle's quantized matrices are left separate.
fn fuse(parts: &[&Linear]) -> Result<Option<Linear>> {
    let biases: Vec<Option<Tensor>> = parts
        .iter()
        .map(|p| match p {
            Linear::Dense { bias, .. }
            | Linear::Quantized { bias, .. }
            | Linear::Q8 { bias, .. }
            | Linear::Q4 { bias, .. } => bias.clone(),
        })
        .collect();
    let bias = if biases.iter().all(Option::is_some) {
        let b: Vec<Tensor> = biases.into_iter().flatten().collect();
        Some(Tensor::cat(&b, 0)?)
    } else if biases.iter().all(Option::is_none) {
        None
    } else {
        return Ok(None);
    };
    let dense: Option<Vec<Tensor>> = parts
        .iter()
        .map(|p| match p {
            Linear::Dense { weight, .. } => Some(weight.clone()),
            _ => None,
        })
        .collect();
    if let Some(ws) = dense {
        return Ok(Some(Linear::Dense { weight: Tensor::cat(&ws, 0)?, bias }));
    }
    let q8: Option<Vec<&Q8Matrix>> = parts
        .iter()
        .map(|p| match p {
            Linear::Q8 { weight, .. } => Some(weight.as_ref()),
            _ => None,
        })
        .collect();
    if let Some(weight) = q8.and_then(|ws| Q8Matrix::concat_rows(&ws)) {
        return Ok(Some(Linear::Q8 { weight: Arc::new(weight), bias }));
    }
    let q4: Option<Vec<&Q4Matrix>> = parts
        .iter()
        .map(|p| match p {
            Linear::Q4 { weight, .. } => Some(weight.as_ref()),
            _ => None,
        })
        .collect();
    if let Some(weight) = q4.and_then(|ws| Q4Matrix::concat_rows(&ws)) {
        return Ok(Some(Linear::Q4 { weight: Arc::new(weight), bias }));
    }
    Ok(None)
}

/// Projections of the same input: fused into one matmul for inference,
/// kept apart in training so each weight stays its own variable.
#[derive(Debug, Clone)]
enum Projections {
    Fused(Linear),
    Separate(Vec<Linear>),
}

impl Projections {
    fn new(parts: Vec<Linear>, w: &Weights, mode: Mode) -> Result<Self> {
        let fused = match mode {
            Mode::Inference => fuse(&parts.iter().collect::<Vec<_>>())?,
            Mode::Training => None,
        };
        Ok(match fused {
            Some(f) => Projections::Fused(w.finish(f)?),
            None => Projections::Separate(parts.into_iter().map(|p| w.finish(p)).collect::<Result<Vec<_>>>()?),
        })
    }

    /// The outputs, of the given widths.
    fn forward(&self, xs: &Tensor, widths: &[usize]) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Projections::Fused(l) => {
                let y = l.forward(xs)?;
                let mut start = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let part = y.narrow(D::Minus1, start, w);
                        start += w;
                        part
                    })
                    .collect()
            }
            Projections::Separate(ls) => ls.iter().map(|l| l.forward(xs)).collect(),
        }
    }
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, xs: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        match mode {
            Mode::Inference => candle_nn::ops::rms_norm(xs, &self.weight, self.eps as f32),
            Mode::Training => {
                // Computed in f32 like transformers' LlamaRMSNorm, then cast back.
                let dtype = xs.dtype();
                let x = xs.to_dtype(DType::F32)?;
                let var = x.sqr()?.mean_keepdim(D::Minus1)?;
                let x = x.broadcast_div(&(var + self.eps)?.sqrt()?)?;
                x.to_dtype(dtype)?.broadcast_mul(&self.weight)
            }
        }
    }
}

/// Precomputed cos/sin for every position up to the context length.
#[derive(Debug, Clone)]
struct RotaryEmbedding {
    /// `[max_positions, head_dim / 2]`
    cos: Tensor,
    sin: Tensor,
}

impl RotaryEmbedding {
    fn new(cfg: &Config, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let mut inv_freq: Vec<f64> =
            (0..half).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64)).collect();
        // YaRN's attention factor. transformers folds it into cos and sin,
        // so q and k each carry it and the attention logits its square.
        let mut scale = 1.0f32;
        match &cfg.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => inv_freq.iter_mut().for_each(|f| *f /= factor),
            Some(RopeScaling::Yarn(y)) => {
                // transformers' _compute_yarn_parameters.
                let keep = y.extrapolation(cfg.rope_theta, cfg.head_dim);
                for (f, k) in inv_freq.iter_mut().zip(keep) {
                    *f = *f / y.factor * (1.0 - k) + *f * k;
                }
                scale = y.attention_factor as f32;
            }
            Some(RopeScaling::Llama3(s)) => {
                // transformers' _compute_llama3_parameters.
                let old_ctx = s.original_max_position_embeddings as f64;
                let low_wavelen = old_ctx / s.low_freq_factor;
                let high_wavelen = old_ctx / s.high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= s.factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                        *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                    }
                }
            }
        }
        if let Some(factors) = &cfg.rope_freq_factors {
            // llama.cpp: θ = pos · base^(-2i/d) / factor_i.
            for (f, &div) in inv_freq.iter_mut().zip(factors) {
                *f /= div as f64;
            }
        }
        let n = cfg.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for f in &inv_freq {
                // f32 angle like transformers (inv_freq and positions in f32).
                let angle = (pos as f32) * (*f as f32);
                cos.push(angle.cos() * scale);
                sin.push(angle.sin() * scale);
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
        Ok(Self { cos, sin })
    }

    /// cos/sin rows for `positions` (`[b, t]` u32), shaped `[b, t, head_dim/2]`.
    fn at(&self, positions: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, ()))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, ()))?;
        Ok((cos, sin))
    }
}

/// Applies RoPE to `xs: [b, heads, t, head_dim]`.
fn apply_rope(xs: &Tensor, cos: &Tensor, sin: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
    match mode {
        Mode::Inference => candle_nn::rotary_emb::rope(&xs.contiguous()?, cos, sin),
        Mode::Training => {
            let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
            let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
            let half = xs.dim(D::Minus1)? / 2;
            let x1 = xs.narrow(D::Minus1, 0, half)?;
            let x2 = xs.narrow(D::Minus1, half, half)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
        }
    }
}

/// Keys and values of one layer, `[b, kv_heads, capacity, head_dim]`, of
/// which the first `len` positions are filled.
#[derive(Debug, Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// The key/value cache of a batch being decoded incrementally.
///
/// Storage grows by doubling (never beyond the context length), so a long
/// generation does not copy the whole cache on every token.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// The CPU backend's keys and values (see `cpu`): one or the other
    /// vector is used, by the backend of the model that fills the cache.
    host: Vec<Option<HostKv>>,
    len: usize,
    left_pad: Vec<usize>,
}

impl KvCache {
    /// An empty cache for a batch whose rows have the given left padding.
    pub fn new(num_layers: usize, left_pad: Vec<usize>) -> Self {
        Self { layers: vec![None; num_layers], host: vec![None; num_layers], len: 0, left_pad }
    }

    /// Columns filled so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch_size(&self) -> usize {
        self.left_pad.len()
    }

    pub fn left_pad(&self) -> &[usize] {
        &self.left_pad
    }

    /// A cache whose row `i` is this cache's row `rows[i]`: used to fan one
    /// prefilled prompt out into a group of completions, and to drop
    /// finished rows.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.batch_size()) {
            return Err(Error::InvalidInput(format!("row {bad} of a cache of {} rows", self.batch_size())));
        }
        let host = self.host.iter().map(|l| l.as_ref().map(|l| l.select_rows(rows, self.len))).collect();
        let first = self.layers.iter().flatten().next();
        let device = match first {
            Some(l) => l.k.device().clone(),
            None => Device::Cpu,
        };
        let idx = Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), &device)?;
        let layers = self
            .layers
            .iter()
            .map(|l| -> Result<Option<LayerCache>> {
                Ok(match l {
                    // Whole rows, spare capacity included: one copy, and
                    // the next appends need no reallocation.
                    Some(l) => Some(LayerCache { k: l.k.index_select(&idx, 0)?, v: l.v.index_select(&idx, 0)? }),
                    None => None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, host, len: self.len, left_pad: rows.iter().map(|&r| self.left_pad[r]).collect() })
    }

    /// Appends `k`, `v` (`[b, kv_heads, t, d]`) to layer `i` and returns the
    /// filled keys and values so far.
    fn append(&mut self, i: usize, k: &Tensor, v: &Tensor, max_len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let len = self.len;
        let needed = len + t;
        let layer = &mut self.layers[i];
        let grow = match layer {
            None => true,
            Some(l) => l.k.dim(2)? < needed,
        };
        if grow {
            let (b, h, _, d) = k.dims4()?;
            let capacity = (needed.max(64).next_power_of_two()).min(max_len.max(needed));
            let new_k = Tensor::zeros((b, h, capacity, d), k.dtype(), k.device())?;
            let new_v = Tensor::zeros((b, h, capacity, d), v.dtype(), v.device())?;
            if let Some(old) = layer.as_ref().filter(|_| len > 0) {
                new_k.slice_set(&old.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                new_v.slice_set(&old.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            *layer = Some(LayerCache { k: new_k, v: new_v });
        }
        let l = layer.as_ref().expect("allocated above");
        l.k.slice_set(&k.contiguous()?, 2, len)?;
        l.v.slice_set(&v.contiguous()?, 2, len)?;
        Ok((l.k.narrow(2, 0, needed)?, l.v.narrow(2, 0, needed)?))
    }
}

#[derive(Debug, Clone)]
struct Attention {
    qkv: Projections,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &Config, w: &Weights, prefix: &str, mode: Mode) -> Result<Self> {
        let h = cfg.hidden_size;
        let q_out = cfg.num_attention_heads * cfg.head_dim;
        let kv_out = cfg.num_key_value_heads * cfg.head_dim;
        let bias = cfg.attention_bias;
        let q_proj = w.linear(&format!("{prefix}.q_proj"), q_out, h, bias)?;
        let k_proj = w.linear(&format!("{prefix}.k_proj"), kv_out, h, bias)?;
        let v_proj = w.linear(&format!("{prefix}.v_proj"), kv_out, h, bias)?;
        let o_proj = w.finish(w.linear(&format!("{prefix}.o_proj"), h, q_out, cfg.output_bias)?)?;
        let qkv = Projections::new(vec![q_proj, k_proj, v_proj], w, mode)?;
        Ok(Self {
            qkv,
            o_proj,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    fn forward(&self, xs: &Tensor, ctx: &mut StepContext, layer: usize) -> candle_core::Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (q, k, v) = match &self.qkv.forward(xs, &[nh * d, nkv * d, nkv * d])?[..] {
            [q, k, v] => (q.clone(), k.clone(), v.clone()),
            _ => unreachable!("three projections"),
        };
        let q = q.reshape((b, t, nh, d))?.transpose(1, 2)?;
        let k = k.reshape((b, t, nkv, d))?.transpose(1, 2)?;
        let v = v.reshape((b, t, nkv, d))?.transpose(1, 2)?.contiguous()?;
        let q = apply_rope(&q, &ctx.cos, &ctx.sin, ctx.mode)?;
        let k = apply_rope(&k, &ctx.cos, &ctx.sin, ctx.mode)?;

        let (k, v) = match ctx.cache.as_deref_mut() {
            Some(cache) => cache.append(layer, &k, &v, ctx.max_len)?,
            None => (k, v),
        };
        let total = k.dim(2)?;
        let groups = nh / nkv;
        let scale = 1.0 / (d as f64).sqrt();
        let out = if ctx.fused_attention && t == 1 {
            q.contiguous()?.apply_op3_no_bwd(
                &k,
                &v,
                &crate::kernels::DecodeAttention { scale: scale as f32, left_pad: ctx.left_pad.clone() },
            )?
        } else if ctx.fused_attention {
            self.attend_fused(&q, &k, &v, total - t, &ctx.left_pad, scale)?
        } else {
            // Grouped-query attention without copying k/v per query head:
            // the query heads sharing a kv head are stacked along the row
            // axis, so one batched matmul per kv head covers them all.
            // transformers' repeat_kv orders heads the same way
            // (head = kv_head * groups + g).
            let q = q.contiguous()?.reshape((b, nkv, groups * t, d))?;
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let scores = match &ctx.mask {
                Some(mask) => scores.reshape((b, nkv, groups, t, total))?.broadcast_add(mask)?.reshape((
                    b,
                    nkv,
                    groups * t,
                    total,
                ))?,
                None => scores,
            };
            let probs = match ctx.mode {
                Mode::Inference => candle_nn::ops::softmax_last_dim(&scores)?,
                Mode::Training => candle_nn::ops::softmax(&scores, D::Minus1)?,
            };
            probs.matmul(&v)?.reshape((b, nh, t, d))?
        };
        let out = out.transpose(1, 2)?.reshape((b, t, nh * d))?;
        self.o_proj.forward(&out)
    }

    /// CPU f32 inference attention: queries in blocks so that each block's
    /// scores cover only the keys it can see (about half the work of a full
    /// causal square, and bounded memory on long sequences), with scale,
    /// mask and softmax fused into one pass.
    fn attend_fused(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        past: usize,
        left_pad: &[usize],
        scale: f64,
    ) -> candle_core::Result<Tensor> {
        let (b, nh, t, d) = q.dims4()?;
        let nkv = self.num_kv_heads;
        let groups = nh / nkv;
        let q = q.contiguous()?.reshape((b, nkv, groups, t, d))?;
        // Keys transposed once per layer: gemm runs about a fifth faster on
        // a row-major [d, keys] operand than on the transposed view, and
        // every query block reuses the copy.
        let kt = if t > 1 { k.t()?.contiguous()? } else { k.t()? };
        let mut outs = Vec::with_capacity(t.div_ceil(QUERY_BLOCK));
        let mut q0 = 0;
        while q0 < t {
            let c = QUERY_BLOCK.min(t - q0);
            let qc = if c == t {
                q.reshape((b, nkv, groups * t, d))?
            } else {
                q.narrow(3, q0, c)?.contiguous()?.reshape((b, nkv, groups * c, d))?
            };
            let keys = past + q0 + c;
            let scores = qc.matmul(&kt.narrow(3, 0, keys)?)?;
            let probs = scores.apply_op1_no_bwd(&crate::kernels::CausalSoftmax {
                scale: scale as f32,
                rows_per_batch: nkv * groups * c,
                queries: c,
                query_start: past + q0,
                left_pad: left_pad.to_vec(),
            })?;
            outs.push(probs.matmul(&v.narrow(2, 0, keys)?)?.reshape((b, nh, c, d))?);
            q0 += c;
        }
        if outs.len() == 1 { Ok(outs.pop().expect("one block")) } else { Tensor::cat(&outs, 2) }
    }
}

/// Queries per attention block in [`Attention::attend_fused`].
const QUERY_BLOCK: usize = 256;

#[derive(Debug, Clone)]
struct Mlp {
    gate_up: Projections,
    down_proj: Linear,
    intermediate: usize,
}

impl Mlp {
    fn new(cfg: &Config, w: &Weights, prefix: &str, mode: Mode) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let gate_proj = w.linear(&format!("{prefix}.gate_proj"), i, h, false)?;
        let up_proj = w.linear(&format!("{prefix}.up_proj"), i, h, false)?;
        let down_proj = w.finish(w.linear(&format!("{prefix}.down_proj"), h, i, false)?)?;
        let gate_up = Projections::new(vec![gate_proj, up_proj], w, mode)?;
        Ok(Self { gate_up, down_proj, intermediate: i })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let i = self.intermediate;
        let parts = self.gate_up.forward(xs, &[i, i])?;
        self.down_proj.forward(&(candle_nn::ops::silu(&parts[0])? * &parts[1])?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(cfg: &Config, w: &Weights, prefix: &str, mode: Mode) -> Result<Self> {
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: w.vector(&format!("{prefix}.{name}.weight"), cfg.hidden_size)?,
                eps: cfg.rms_norm_eps,
            })
        };
        Ok(Self {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::new(cfg, w, &format!("{prefix}.self_attn"), mode)?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: Mlp::new(cfg, w, &format!("{prefix}.mlp"), mode)?,
        })
    }

    fn forward(&self, xs: &Tensor, ctx: &mut StepContext, layer: usize) -> candle_core::Result<Tensor> {
        let h = self.input_layernorm.forward(xs, ctx.mode)?;
        let xs = (xs + self.self_attn.forward(&h, ctx, layer)?)?;
        let h = self.post_attention_layernorm.forward(&xs, ctx.mode)?;
        xs + self.mlp.forward(&h)?
    }
}

/// Per-forward values shared by all layers.
struct StepContext<'a> {
    cos: Tensor,
    sin: Tensor,
    /// Additive mask `[b or 1, 1, 1, t, total]`, None when nothing is masked.
    mask: Option<Tensor>,
    cache: Option<&'a mut KvCache>,
    mode: Mode,
    max_len: usize,
    /// Use [`Attention::attend_fused`] (CPU, f32, inference).
    fused_attention: bool,
    left_pad: Vec<usize>,
}

/// Runs `f` on the data of an f32 CPU tensor without copying it when it
/// is contiguous.
fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) => {
            Ok(f(&data[layout.start_offset()..layout.start_offset() + t.elem_count()]))
        }
        _ => Err(Error::InvalidInput("expected an f32 tensor in host memory".into())),
    }
}

fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    with_host_f32(t, |d| d.to_vec())
}

/// A projection for the CPU backend (consumes the candle one, so its
/// dense weight is freed once packed).
fn cpu_linear(l: Linear) -> Result<CpuLinear> {
    let bias = |b: Option<Tensor>| b.as_ref().map(host_vec).transpose();
    Ok(match l {
        Linear::Dense { weight, bias: b } => {
            let (n, k) = weight.dims2()?;
            let w = with_host_f32(&weight, |d| PackedB::from_rows(d, n, k))?;
            CpuLinear::Packed { w: Arc::new(w), bias: bias(b)? }
        }
        Linear::Q4 { weight, bias: b } => CpuLinear::Q4 { w: weight, bias: bias(b)? },
        Linear::Q8 { weight, bias: b } => CpuLinear::Q8 { w: weight, bias: bias(b)? },
        Linear::Quantized { .. } => {
            return Err(Error::InvalidInput("candle's quantized matrices have no CPU-backend form".into()));
        }
    })
}

impl CandleParts {
    /// Whether every projection has a CPU-backend form.
    fn cpu_ready(&self) -> bool {
        let ok = |l: &Linear| matches!(l, Linear::Dense { .. } | Linear::Q4 { .. } | Linear::Q8 { .. });
        let fused = |p: &Projections| matches!(p, Projections::Fused(l) if ok(l));
        ok(&self.lm_head)
            && self.layers.iter().all(|l| {
                fused(&l.self_attn.qkv) && ok(&l.self_attn.o_proj) && fused(&l.mlp.gate_up) && ok(&l.mlp.down_proj)
            })
    }

    /// Repacks the weights for the CPU backend, layer by layer.
    fn into_cpu(self, cfg: &Config) -> Result<CpuModel> {
        let CandleParts { embed_tokens, layers, norm, lm_head, rotary } = self;
        let inter = cfg.intermediate_size;
        let mut cpu_layers = Vec::with_capacity(layers.len());
        for layer in layers {
            let DecoderLayer { input_layernorm, self_attn, post_attention_layernorm, mlp } = layer;
            let (Projections::Fused(qkv), Projections::Fused(gate_up)) = (self_attn.qkv, mlp.gate_up) else {
                return Err(Error::InvalidInput("unfused projections have no CPU-backend form".into()));
            };
            let gate_up = match gate_up {
                Linear::Dense { weight, bias: None } if inter.is_multiple_of(crate::sgemm::NR) => {
                    let h = weight.dim(1)?;
                    let both =
                        with_host_f32(&weight, |d| PackedB::interleaved(&d[..inter * h], &d[inter * h..], inter, h))?
                            .expect("n a multiple of NR");
                    GateUp::Packed(Arc::new(both))
                }
                other => GateUp::Fused(cpu_linear(other)?),
            };
            cpu_layers.push(CpuLayer {
                attn_norm: host_vec(&input_layernorm.weight)?,
                qkv: cpu_linear(qkv)?,
                o: cpu_linear(self_attn.o_proj)?,
                mlp_norm: host_vec(&post_attention_layernorm.weight)?,
                gate_up,
                down: cpu_linear(mlp.down_proj)?,
            });
        }
        let tied_dense = cfg.tie_word_embeddings && matches!(lm_head, Linear::Dense { .. });
        let lm_head = cpu_linear(lm_head)?;
        let embed = if tied_dense { Embedding::LmHead } else { Embedding::Table(host_vec(&embed_tokens)?) };
        drop(embed_tokens);
        Ok(CpuModel {
            layers: cpu_layers,
            norm: host_vec(&norm.weight)?,
            eps: norm.eps as f32,
            lm_head,
            embed,
            cos: host_vec(&rotary.cos)?,
            sin: host_vec(&rotary.sin)?,
            hidden: cfg.hidden_size,
            inter,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            vocab: cfg.vocab_size,
        })
    }
}

/// The candle modules of the decoder (any device, training included).
#[derive(Debug, Clone)]
struct CandleParts {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: RotaryEmbedding,
}

/// How the forward pass runs.
#[derive(Debug, Clone)]
enum Backend {
    /// candle ops (GPUs, training, CPUs without AVX2).
    Candle(CandleParts),
    /// The engine's own CPU inference path (see `cpu`).
    Cpu(Arc<CpuModel>),
}

#[derive(Debug, Clone)]
pub struct Model {
    backend: Backend,
    cfg: Config,
    mode: Mode,
    device: Device,
    dtype: DType,
}

impl Model {
    /// An inference model over dense weights with Hugging Face names.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, Weights::Dense(vb), Mode::Inference)
    }

    /// A model whose forward pass supports backward: pass a `VarBuilder`
    /// backed by a `VarMap` to train its variables.
    pub fn new_trainable(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, Weights::Dense(vb), Mode::Training)
    }

    pub fn load(cfg: &Config, weights: Weights, mode: Mode) -> Result<Self> {
        cfg.validate()?;
        if mode == Mode::Training && weights.is_quantized() {
            return Err(Error::InvalidInput("quantized weights cannot be trained; load the model in f32".into()));
        }
        let vb = weights.dense();
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let embed_tokens = weights.tensor("model.embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, &weights, &format!("model.layers.{i}"), mode))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm { weight: weights.vector("model.norm.weight", cfg.hidden_size)?, eps: cfg.rms_norm_eps };
        let lm_head = if cfg.tie_word_embeddings {
            match &weights {
                Weights::Quantized { matrices, .. } if matrices.contains_key("model.embed_tokens.weight") => {
                    weights.linear("model.embed_tokens", cfg.vocab_size, cfg.hidden_size, false)?
                }
                _ => weights.finish(Linear::Dense { weight: embed_tokens.clone(), bias: None })?,
            }
        } else {
            weights.finish(weights.linear("lm_head", cfg.vocab_size, cfg.hidden_size, false)?)?
        };
        let rotary = RotaryEmbedding::new(cfg, dtype, &device)?;
        // The loader's copies of the weights go before any repacking, so
        // that the peak holds one copy plus one layer.
        drop(weights);
        let parts = CandleParts { embed_tokens, layers, norm, lm_head, rotary };
        let cpu_path = mode == Mode::Inference
            && device.is_cpu()
            && dtype == DType::F32
            && crate::sgemm::supported()
            && parts.cpu_ready();
        let backend = if cpu_path { Backend::Cpu(Arc::new(parts.into_cpu(cfg)?)) } else { Backend::Candle(parts) };
        Ok(Self { backend, cfg: cfg.clone(), mode, device, dtype })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// An empty KV cache for a batch with this left padding.
    pub fn new_cache(&self, left_pad: Vec<usize>) -> KvCache {
        KvCache::new(self.cfg.num_hidden_layers, left_pad)
    }

    /// Full-sequence logits `[b, t, vocab]` for left-padded `input_ids`.
    pub fn forward(&self, input_ids: &Tensor, left_pad: &[usize]) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, left_pad)?;
        self.logits(&hidden)
    }

    /// Final (normed) hidden states `[b, t, hidden]` of a whole batch,
    /// without a cache. Callers that need log-probs over a long sequence
    /// apply [`Model::logits`] chunk by chunk to bound memory.
    pub fn forward_hidden(&self, input_ids: &Tensor, left_pad: &[usize]) -> Result<Tensor> {
        self.run(input_ids, left_pad, None)
    }

    /// Feeds the next columns of a batch through the cache and returns their
    /// hidden states `[b, t, hidden]`. The first call is the prefill.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let left_pad = cache.left_pad.clone();
        self.run(input_ids, &left_pad, Some(cache))
    }

    /// Projects hidden states to vocabulary logits.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.backend {
            Backend::Candle(p) => Ok(p.lm_head.forward(hidden)?),
            Backend::Cpu(_) => {
                let mut logits = Vec::new();
                self.logits_into(hidden, &mut logits)?;
                let mut dims = hidden.dims().to_vec();
                *dims.last_mut().expect("logits_into checked the last dimension") = self.cfg.vocab_size;
                Ok(Tensor::from_vec(logits, dims, &self.device)?)
            }
        }
    }

    /// [`Model::logits`] of hidden states `[.., hidden]` into `out` as
    /// rows of `vocab_size`, reusing its allocation: a decoding step's
    /// logits are megabytes, and a fresh zeroed buffer each step costs
    /// page faults and a pass over it.
    pub fn logits_into(&self, hidden: &Tensor, out: &mut Vec<f32>) -> Result<()> {
        match &self.backend {
            Backend::Candle(_) => {
                *out = self.logits(hidden)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            }
            Backend::Cpu(cpu) => {
                let h = self.cfg.hidden_size;
                if hidden.dims().last() != Some(&h) {
                    return Err(Error::InvalidInput(format!("hidden states {:?} do not end in {h}", hidden.dims())));
                }
                let data = hidden.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let m = data.len() / h;
                out.resize(m * self.cfg.vocab_size, 0.0);
                cpu::in_pool(|| cpu.logits_into(&data, m, out));
            }
        }
        Ok(())
    }

    /// Teacher-forced log-probs `[b, t-1]` through the CPU backend (the
    /// lm_head fused with the log-softmax), or None on the candle backend.
    pub(crate) fn cpu_logprobs(
        &self,
        input_ids: &Tensor,
        left_pad: &[usize],
        temperature: f64,
    ) -> Option<Result<Tensor>> {
        let Backend::Cpu(cpu) = &self.backend else {
            return None;
        };
        let run = || -> Result<Tensor> {
            let (b, t) = input_ids.dims2()?;
            let ids = input_ids.flatten_all()?.to_vec1::<u32>()?;
            self.check(b, t, left_pad, 0)?;
            let h = self.cfg.hidden_size;
            let lp = cpu::in_pool(|| -> Result<Vec<f32>> {
                let hidden = cpu.forward(&ids, b, t, left_pad, None, self.max_len(left_pad))?;
                // Rows whose next token exists: columns 0..t-1 of each row.
                let mut rows = Vec::with_capacity(b * (t - 1) * h);
                let mut targets = Vec::with_capacity(b * (t - 1));
                for r in 0..b {
                    rows.extend_from_slice(&hidden[r * t * h..(r * t + t - 1) * h]);
                    targets.extend_from_slice(&ids[r * t + 1..(r + 1) * t]);
                }
                Ok(cpu.logprobs(&rows, &targets, (1.0 / temperature) as f32))
            })?;
            Ok(Tensor::from_vec(lp, (b, t - 1), &self.device)?)
        };
        Some(run())
    }

    fn max_len(&self, left_pad: &[usize]) -> usize {
        self.cfg.max_position_embeddings + left_pad.iter().copied().max().unwrap_or(0)
    }

    /// Validates a batch of `b` rows of `t` new columns after `past`.
    fn check(&self, b: usize, t: usize, left_pad: &[usize], past: usize) -> Result<()> {
        if left_pad.len() != b {
            return Err(Error::InvalidInput(format!("{} padding entries for a batch of {b}", left_pad.len())));
        }
        let total = past + t;
        if left_pad.iter().any(|&p| p > total) {
            return Err(Error::InvalidInput("padding longer than the sequence".into()));
        }
        let longest = total - left_pad.iter().copied().min().unwrap_or(0);
        if longest > self.cfg.max_position_embeddings {
            return Err(Error::ContextOverflow { len: longest, context: self.cfg.max_position_embeddings });
        }
        Ok(())
    }

    fn run(&self, input_ids: &Tensor, left_pad: &[usize], mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len);
        let total = past + t;
        self.check(b, t, left_pad, past)?;
        if let Some(c) = cache.as_ref()
            && c.batch_size() != b
        {
            return Err(Error::InvalidInput(format!("cache holds {} rows, batch has {b}", c.batch_size())));
        }
        let parts = match &self.backend {
            Backend::Candle(p) => p,
            Backend::Cpu(cpu) => {
                let ids = input_ids.flatten_all()?.to_vec1::<u32>()?;
                let max_len = self.max_len(left_pad);
                let host = cache.as_deref_mut().map(|c| (&mut c.host[..], past));
                let hidden = cpu::in_pool(|| cpu.forward(&ids, b, t, left_pad, host, max_len))?;
                if let Some(c) = cache {
                    c.len = total;
                }
                return Ok(Tensor::from_vec(hidden, (b, t, self.cfg.hidden_size), &self.device)?);
            }
        };

        // Positions count from each row's first real token; padding columns
        // get position 0 (their outputs are never used).
        let mut positions = Vec::with_capacity(b * t);
        for &pad in left_pad {
            for col in past..total {
                positions.push(col.saturating_sub(pad) as u32);
            }
        }
        let positions = Tensor::from_vec(positions, (b, t), &self.device)?;
        let (cos, sin) = parts.rotary.at(&positions)?;
        let fused_attention = self.mode == Mode::Inference && self.device.is_cpu() && self.dtype == DType::F32;
        let mask = if fused_attention { None } else { self.mask(left_pad, past, t)? };

        let mut ctx = StepContext {
            cos,
            sin,
            mask,
            cache: cache.as_deref_mut(),
            mode: self.mode,
            max_len: self.max_len(left_pad),
            fused_attention,
            left_pad: left_pad.to_vec(),
        };
        let (b2, t2) = input_ids.dims2()?;
        let ids = input_ids.flatten_all()?;
        let mut xs = parts.embed_tokens.index_select(&ids, 0)?.reshape((b2, t2, self.cfg.hidden_size))?;
        for (i, layer) in parts.layers.iter().enumerate() {
            xs = layer.forward(&xs, &mut ctx, i)?;
        }
        if let Some(c) = cache {
            c.len = total;
        }
        Ok(parts.norm.forward(&xs, self.mode)?)
    }

    /// The additive attention mask for query columns `past..past+t` over key
    /// columns `0..past+t`: causal, and padding keys hidden. A padding query
    /// still sees itself so that its softmax row is never all `-inf` (which
    /// would turn into NaNs that leak through `0 * NaN`).
    fn mask(&self, left_pad: &[usize], past: usize, t: usize) -> Result<Option<Tensor>> {
        let total = past + t;
        let padded = left_pad.iter().any(|&p| p > 0);
        if !padded && t == 1 {
            return Ok(None);
        }
        let rows: Vec<usize> = if padded { left_pad.to_vec() } else { vec![0] };
        let mut data = Vec::with_capacity(rows.len() * t * total);
        for &pad in &rows {
            for q in past..total {
                for k in 0..total {
                    let visible = k <= q && (k >= pad || k == q);
                    data.push(if visible { 0f32 } else { f32::NEG_INFINITY });
                }
            }
        }
        let mask = Tensor::from_vec(data, (rows.len(), 1, 1, t, total), &self.device)?.to_dtype(self.dtype)?;
        Ok(Some(mask))
    }
}
