//! The RLT engine: language models on candle for RLT Studio.
//!
//! No web and no SQL live here; the server drives these pieces.
//!
//! - [`load`]: [`load::load_model`] reads a GGUF file or a Hugging Face
//!   directory into a [`load::LoadedModel`] (model, tokenizer, chat
//!   template, sha256, architecture, config), with weights in f32 (exact
//!   scoring, training) or quantized (fast decoding: a GGUF keeps its own
//!   Q4_1/Q8_0 blocks), see [`load::WeightMode`].
//!   [`load::load_trainable`] returns the weights as a `VarMap`.
//! - [`gguf`]: GGUF metadata and weights under Hugging Face names.
//! - [`tokenizer`]: [`tokenizer::Tokenizer`], built from GGUF metadata
//!   exactly like the model's original tokenizer, or from `tokenizer.json`.
//! - [`chat_template`]: [`chat_template::ChatTemplate`] renders the model's
//!   Jinja template like `apply_chat_template`, including continuing a
//!   final assistant message ([`chat_template::Ending`]).
//! - [`model`]: the Llama/Qwen2 decoder ([`model::Config`],
//!   [`model::Model`]) with left-padded batches, a KV cache, full-sequence
//!   logits and a backward-capable training mode.
//! - [`logprobs`]: teacher-forced `log_softmax(logits / τ)` of each next
//!   token ([`logprobs::token_logprobs`], [`logprobs::batch_logprobs`]).
//! - [`sampling`], [`generate`]: seeded temperature/top-p sampling and
//!   batched generation of many completions per prompt
//!   ([`generate::generate`]).
//! - [`reward`]: the RLT reward: teacher prompt, student chat, tag
//!   parsing, span finding and the reward with its parts, batched
//!   ([`reward::score_batch`]).
//! - [`device`]: CPU by default; `cuda` and `metal` cargo features.
//! - [`memory`]: a model whose weights cannot fit in the memory left is
//!   refused before loading, not killed by the kernel half-way.
//!
//! On CPU in f32 inference, attention (prefill: blocked causal softmax;
//! decode: one fused pass per head) and the log-prob selection run as
//! fused kernels, and quantized matrices run on the engine's own AVX2
//! kernels (Q4_1 and 8-bit blocks, activations quantized to 8 bits per
//! block of 32 as in llama.cpp); elsewhere (training mode, GPUs, CPUs
//! without AVX2) the same model runs on plain candle ops and candle's
//! quantized matmul.
//! `engine/examples/bench.rs` measures scoring and decoding throughput.

pub mod chat_template;
mod cpu;
mod decode_attention;
pub mod device;
pub mod error;
pub mod generate;
pub mod gguf;
mod kernels;
pub mod load;
pub mod logprobs;
pub mod memory;
pub mod model;
mod quant;
pub mod reward;
pub mod sampling;
mod sgemm;
pub mod tokenizer;

pub use error::{Error, Result};
