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
