//! Shared by the engine's integration tests: where the real model is, and
//! loading it once per test binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use rlt_engine::load::{LoadedModel, WeightMode, load_model};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `$RLT_DATA_DIR`, by default `<workspace>/data`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("RLT_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("data"))
}

pub fn model_path() -> PathBuf {
    let p = data_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-assets.sh first", p.display());
    p
}

/// An empty directory for this test process named after `name` (anything
/// left by an earlier run under the same name is removed first).
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rlt-engine-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(name)
}

pub fn f32_model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&model_path(), WeightMode::F32, &Device::Cpu).expect("load f32"))
}

pub fn q8_model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| load_model(&model_path(), WeightMode::Quantized, &Device::Cpu).expect("load q8_0"))
}

/// One position of a logits fixture made by transformers
/// (scripts/reference/make_fixtures.py, make_tiny_models.py).
#[derive(serde::Deserialize)]
pub struct Position {
    pub argmax: usize,
    pub max: f32,
    pub logsumexp: f32,
    /// The logits of the fixture's probe ids.
    pub probe: Vec<f32>,
    /// The log-prob of the next token at τ = 1 and τ = 0.7 (absent at the
    /// last position).
    pub next_logprob: Option<f32>,
    pub next_logprob_t07: Option<f32>,
}

/// `log Σ exp(row)`, accumulated in f64.
pub fn logsumexp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32
}
