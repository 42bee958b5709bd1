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

pub fn assert_close(a: f32, b: f32, tol: f32, what: &str) {
    assert!((a - b).abs() <= tol, "{what}: {a} vs transformers {b}");
}

/// Rows of logits `[positions, vocab]` against a fixture's positions: the
/// max, the logit at transformers' argmax, the logsumexp and the probes.
pub fn check_logit_rows(rows: &[Vec<f32>], positions: &[Position], probe_ids: &[usize], tol: f32, what: &str) {
    assert_eq!(rows.len(), positions.len(), "{what}");
    for (p, (row, r)) in rows.iter().zip(positions).enumerate() {
        let at = |x: &str| format!("{what} pos {p} {x}");
        assert_close(row.iter().copied().fold(f32::NEG_INFINITY, f32::max), r.max, tol, &at("max"));
        assert_close(row[r.argmax], r.max, tol, &at("logit at transformers' argmax"));
        assert_close(logsumexp(row), r.logsumexp, tol, &at("logsumexp"));
        for (&id, &v) in probe_ids.iter().zip(&r.probe) {
            assert_close(row[id], v, tol, &at(&format!("logit {id}")));
        }
    }
}

/// Teacher-forced log-probs of a sequence's tokens after the first (at τ = 1,
/// or 0.7 when `t07`) against a fixture's positions.
pub fn check_next_logprobs(lp: &[f32], positions: &[Position], t07: bool, tol: f32, what: &str) {
    assert_eq!(lp.len() + 1, positions.len(), "{what}");
    for (p, (&v, r)) in lp.iter().zip(positions).enumerate() {
        let want = if t07 { r.next_logprob_t07 } else { r.next_logprob }.unwrap();
        assert_close(v, want, tol, &format!("{what} pos {p} τ={}", if t07 { 0.7 } else { 1.0 }));
    }
}
