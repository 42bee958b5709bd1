//! Loading a model with its tokenizer and chat template, from a GGUF file
//! or a Hugging Face model directory.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sha2::{Digest, Sha256};

use crate::chat_template::{ChatTemplate, SpecialTokens};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::{Architecture, Config, Mode, Model, Weights};
use crate::tokenizer::Tokenizer;

/// How the weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightMode {
    /// Dense f32: exact scoring and training.
    F32,
    /// Dense bf16 (GPU use; on CPU f32 is faster).
    Bf16,
    /// Projections kept quantized for fast decoding. A GGUF keeps its own
    /// blocks (Q4_1 and Q8_0 run on the engine's AVX2 kernels, so the
    /// weights are exactly the file's); a Hugging Face directory, or other
    /// block formats, are quantized to 8 bits. Activations are quantized to
    /// 8 bits per block of 32, as llama.cpp does.
    Quantized,
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(PathBuf),
    /// A directory with `config.json`, `*.safetensors`, `tokenizer.json`.
    HfDir(PathBuf),
}

impl ModelSource {
    /// A directory is a Hugging Face model, anything else a GGUF file.
    pub fn detect(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        Ok(if meta.is_dir() { Self::HfDir(path.to_path_buf()) } else { Self::Gguf(path.to_path_buf()) })
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf(p) | Self::HfDir(p) => p,
        }
    }
}

/// A model ready to run, with everything needed to prompt it.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// None when the model ships no chat template.
    pub chat_template: Option<ChatTemplate>,
    /// sha256 of the GGUF file; for a directory, of its `config.json` and
    /// weight files (sorted by name) hashed one after the other.
    pub sha256: String,
    pub architecture: Architecture,
    pub config: Config,
    pub source: ModelSource,
    pub weight_mode: WeightMode,
}

impl LoadedModel {
    /// The chat template, or a clear error for models without one.
    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        self.chat_template.as_ref().ok_or_else(|| Error::ChatTemplate("the model has no chat template".into()))
    }
}

/// Loads a model for inference.
pub fn load_model(path: &Path, mode: WeightMode, device: &Device) -> Result<LoadedModel> {
    load(path, mode, device, Mode::Inference).map(|(m, _)| m)
}

/// Loads a model in training mode, its weights as the variables of the
/// returned `VarMap` (f32).
pub fn load_trainable(path: &Path, device: &Device) -> Result<(LoadedModel, VarMap)> {
    let (m, vars) = load(path, WeightMode::F32, device, Mode::Training)?;
    Ok((m, vars.expect("training loads a VarMap")))
}

fn load(path: &Path, weight_mode: WeightMode, device: &Device, mode: Mode) -> Result<(LoadedModel, Option<VarMap>)> {
    let source = ModelSource::detect(path)?;
    let parts = match &source {
        ModelSource::Gguf(p) => gguf_parts(p, weight_mode, device)?,
        ModelSource::HfDir(p) => hf_parts(p, weight_mode, device)?,
    };
    let Parts { config, tokenizer, chat_template, sha256, weights } = parts;
    let (model, varmap) = match (weights, mode) {
        (WeightSet::Dense(tensors, dtype), Mode::Training) => {
            let varmap = VarMap::new();
            {
                let mut data = varmap.data().lock().map_err(|_| Error::InvalidInput("poisoned VarMap".into()))?;
                for (name, t) in tensors {
                    data.insert(name, candle_core::Var::from_tensor(&t)?);
                }
            }
            let vb = VarBuilder::from_varmap(&varmap, dtype, device);
            (Model::new_trainable(&config, vb)?, Some(varmap))
        }
        (WeightSet::Dense(tensors, dtype), Mode::Inference) => {
            let vb = VarBuilder::from_tensors(tensors, dtype, device);
            (Model::new(&config, vb)?, None)
        }
        (WeightSet::Mapped(vb), Mode::Inference) => (Model::new(&config, vb)?, None),
        (WeightSet::MappedQ8(vb), Mode::Inference) => {
            (Model::load(&config, Weights::DenseQ8(vb), Mode::Inference)?, None)
        }
        (WeightSet::Mapped(vb), Mode::Training) => {
            let varmap = VarMap::new();
            let names = tensor_names(&config);
            {
                let mut data = varmap.data().lock().map_err(|_| Error::InvalidInput("poisoned VarMap".into()))?;
                for name in names {
                    let t = vb.get_unchecked(&name)?;
                    data.insert(name, candle_core::Var::from_tensor(&t)?);
                }
            }
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
            (Model::new_trainable(&config, vb)?, Some(varmap))
        }
        (WeightSet::Quantized(matrices, dense), Mode::Inference) => {
            let vb = VarBuilder::from_tensors(dense, DType::F32, device);
            let w = Weights::Quantized { matrices: &matrices, dense: vb };
            (Model::load(&config, w, Mode::Inference)?, None)
        }
        (WeightSet::Quantized(..) | WeightSet::MappedQ8(_), Mode::Training) => {
            return Err(Error::InvalidInput("quantized weights cannot be trained".into()));
        }
    };
    Ok((
        LoadedModel {
            model,
            tokenizer,
            chat_template,
            sha256,
            architecture: config.architecture,
            config,
            source,
            weight_mode,
        },
        varmap,
    ))
}

enum WeightSet<'a> {
    Dense(HashMap<String, Tensor>, DType),
    Mapped(VarBuilder<'a>),
    MappedQ8(VarBuilder<'a>),
    Quantized(HashMap<String, Arc<QTensor>>, HashMap<String, Tensor>),
}

struct Parts<'a> {
    config: Config,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    sha256: String,
    weights: WeightSet<'a>,
}

/// The Hugging Face names of every tensor the decoder reads.
pub fn tensor_names(cfg: &Config) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    if !cfg.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for n in [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            names.push(format!("{p}.{n}"));
        }
        if cfg.attention_bias {
            for n in ["q_proj", "k_proj", "v_proj"] {
                names.push(format!("{p}.self_attn.{n}.bias"));
            }
        }
        if cfg.output_bias {
            names.push(format!("{p}.self_attn.o_proj.bias"));
        }
    }
    names
}

/// The shape `[rows, columns]` (or `[len]`) of the decoder's tensor
/// `name` (a Hugging Face name) under `cfg`; None for other names.
pub(crate) fn tensor_shape(cfg: &Config, name: &str) -> Option<Vec<usize>> {
    shape_and_fields(cfg, name).map(|(shape, _)| shape)
}

/// [`tensor_shape`] and the `config.json` fields it comes from.
fn shape_and_fields(cfg: &Config, name: &str) -> Option<(Vec<usize>, &'static [&'static str])> {
    const HEADS: &[&str] = &["num_attention_heads", "head_dim", "hidden_size"];
    const KV_HEADS: &[&str] = &["num_key_value_heads", "head_dim", "hidden_size"];
    const MLP: &[&str] = &["intermediate_size", "hidden_size"];
    let (h, d, f) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    Some(match name.rsplit('.').take(2).collect::<Vec<_>>()[..] {
        ["weight", "embed_tokens" | "lm_head"] => (vec![cfg.vocab_size, h], &["vocab_size", "hidden_size"]),
        ["weight", "input_layernorm" | "post_attention_layernorm" | "norm"] => (vec![h], &["hidden_size"]),
        ["weight", "q_proj"] => (vec![q, h], HEADS),
        ["bias", "q_proj"] => (vec![q], HEADS),
        ["weight", "k_proj" | "v_proj"] => (vec![kv, h], KV_HEADS),
        ["bias", "k_proj" | "v_proj"] => (vec![kv], KV_HEADS),
        ["weight", "o_proj"] => (vec![h, q], HEADS),
        ["bias", "o_proj"] => (vec![h], &["hidden_size"]),
        ["weight", "gate_proj" | "up_proj"] => (vec![f, h], MLP),
        ["weight", "down_proj"] => (vec![h, f], MLP),
        _ => return None,
    })
}

/// The value behind a [`shape_and_fields`] field name.
fn field_value(cfg: &Config, field: &str) -> usize {
    match field {
        "vocab_size" => cfg.vocab_size,
        "hidden_size" => cfg.hidden_size,
        "num_attention_heads" => cfg.num_attention_heads,
        "num_key_value_heads" => cfg.num_key_value_heads,
        "head_dim" => cfg.head_dim,
        _ => cfg.intermediate_size,
    }
}

/// Checks that `files` hold every tensor the decoder reads, each in the
/// shape `config.json` implies; a mismatch names the fields behind the
/// expected shape (candle's own error names only the tensor), and says so
/// when `config_text` (the `config.json` behind `cfg`) has no `head_dim`
/// and it was derived.
fn check_hf_tensors(files: &[PathBuf], cfg: &Config, config_text: &str) -> std::result::Result<(), String> {
    // SAFETY: a read-only map, only its headers read (see the VarBuilder's
    // in `hf_parts`).
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }
        .map_err(|e| format!("unreadable weights: {}", crate::error::candle_reason(&e)))?;
    for name in tensor_names(cfg) {
        let view = st.get(&name).map_err(|_| format!("weights lack tensor `{name}`"))?;
        let Some((want, fields)) = shape_and_fields(cfg, &name) else { continue };
        if view.shape() != want.as_slice() {
            // Read again only here: Config keeps head_dim, not where it came from.
            let head_dim_given = serde_json::from_str::<serde_json::Value>(config_text)
                .is_ok_and(|json| json.get("head_dim").is_some_and(|d| !d.is_null()));
            let fields: Vec<String> = fields
                .iter()
                .map(|&f| match f {
                    "head_dim" if !head_dim_given => format!(
                        "head_dim {} (hidden_size / num_attention_heads, as it gives no head_dim)",
                        cfg.head_dim
                    ),
                    _ => format!("{f} {}", field_value(cfg, f)),
                })
                .collect();
            return Err(format!(
                "tensor `{name}` has shape {:?}, but config.json's {} imply {want:?}",
                view.shape(),
                fields.join(", ")
            ));
        }
    }
    Ok(())
}

fn sha256_files(paths: &[PathBuf]) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(p, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

fn gguf_parts<'a>(path: &Path, mode: WeightMode, device: &Device) -> Result<Parts<'a>> {
    let mut gguf = GgufFile::open(path)?;
    let config = gguf.config()?;
    check_memory(&config, mode, device)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let chat_template = match gguf.get_str("tokenizer.chat_template") {
        Ok(src) => Some(ChatTemplate::new(src, gguf_special_tokens(&gguf, &tokenizer))?),
        Err(_) => None,
    };
    let weights = match mode {
        WeightMode::F32 => WeightSet::Dense(gguf.dense_tensors(&config, device)?, DType::F32),
        WeightMode::Bf16 => WeightSet::Dense(gguf.dense_tensors(&config, device)?, DType::BF16),
        WeightMode::Quantized => {
            let (m, d) = gguf.quantized_tensors(&config, device)?;
            WeightSet::Quantized(m, d)
        }
    };
    let sha256 = sha256_files(&[path.to_path_buf()])?;
    Ok(Parts { config, tokenizer, chat_template, sha256, weights })
}

/// Refuses, before reading them, weights that cannot fit in main memory
/// (a GPU's own memory is the device's to report).
fn check_memory(config: &Config, mode: WeightMode, device: &Device) -> Result<()> {
    if device.is_cpu() { crate::memory::check_fits(crate::memory::model_bytes(config, mode), mode) } else { Ok(()) }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::BadModelDir { path: path.to_path_buf(), reason: format!("invalid JSON: {e}") })
}

/// The special tokens transformers takes from a GGUF for its templates:
/// those its `GGUF_TOKENIZER_MAPPING` reads (bos, eos, unknown, padding).
fn gguf_special_tokens(gguf: &GgufFile, tokenizer: &Tokenizer) -> SpecialTokens {
    [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ]
    .into_iter()
    .fold(SpecialTokens::default(), |set, (name, key)| {
        let id = gguf.metadata().get(key).and_then(|v| v.to_u32().ok());
        set.with(name, id.and_then(|id| tokenizer.id_to_token(id)))
    })
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ..}`.
fn special_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The directory's `*.safetensors` files, sorted by name.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::BadModelDir { path: dir.to_path_buf(), reason: "no *.safetensors weight files".into() });
    }
    Ok(files)
}

/// What the model registry records, without loading any weights: the same
/// sha256 as [`LoadedModel::sha256`], the architecture, and the format
/// (`gguf` or `hf`).
pub fn fingerprint(path: &Path) -> Result<(String, String, &'static str)> {
    match ModelSource::detect(path)? {
        ModelSource::Gguf(file) => {
            let architecture = GgufFile::open(&file)?.architecture()?;
            Ok((sha256_files(&[file])?, architecture.as_str().to_owned(), "gguf"))
        }
        ModelSource::HfDir(dir) => {
            let config_path = dir.join("config.json");
            let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            let config = Config::from_hf_json(&text)?;
            let mut hashed = vec![config_path];
            hashed.extend(safetensors_files(&dir)?);
            Ok((sha256_files(&hashed)?, config.architecture.as_str().to_owned(), "hf"))
        }
    }
}

fn hf_parts<'a>(dir: &Path, mode: WeightMode, device: &Device) -> Result<Parts<'a>> {
    let bad = |reason: String| Error::BadModelDir { path: dir.to_path_buf(), reason };
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(bad("no config.json".into()));
    }
    let config_text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config = Config::from_hf_json(&config_text)?;
    check_memory(&config, mode, device)?;

    let weight_files = safetensors_files(dir)?;

    let tok_cfg_path = dir.join("tokenizer_config.json");
    let tok_cfg = if tok_cfg_path.exists() { read_json(&tok_cfg_path)? } else { serde_json::Value::Null };
    let special = SpecialTokens::NAMES
        .into_iter()
        .fold(SpecialTokens::default(), |set, name| set.with(name, special_token(&tok_cfg, name)));
    let gen_cfg_path = dir.join("generation_config.json");
    let extra_stop: Vec<u32> = if gen_cfg_path.exists() {
        match read_json(&gen_cfg_path)?.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.exists() {
        return Err(bad("no tokenizer.json".into()));
    }
    let owned = |name: &str| special.get(name).map(str::to_string);
    let tokenizer = Tokenizer::from_hf_file(&tok_path, owned("bos_token"), owned("eos_token"), &extra_stop)?;

    // Newer repositories keep the template in its own file.
    let template_file = dir.join("chat_template.jinja");
    let template_src = if template_file.exists() {
        Some(std::fs::read_to_string(&template_file).map_err(|e| Error::io(&template_file, e))?)
    } else {
        match tok_cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: use the default one.
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        }
    };
    let chat_template = template_src.map(|src| ChatTemplate::new(&src, special)).transpose()?;

    let dtype = match mode {
        WeightMode::Bf16 => DType::BF16,
        _ => DType::F32,
    };
    check_hf_tensors(&weight_files, &config, &config_text).map_err(bad)?;
    // SAFETY: the files are memory-mapped read-only; like every mmap
    // loader this assumes nobody rewrites them while the model is loaded.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weight_files, dtype, device)? };
    let weights = match mode {
        WeightMode::F32 | WeightMode::Bf16 => WeightSet::Mapped(vb),
        WeightMode::Quantized if device.is_cpu() && crate::kernels::Q8Matrix::supported() => WeightSet::MappedQ8(vb),
        WeightMode::Quantized => {
            let mut matrices = HashMap::new();
            let mut dense = HashMap::new();
            for name in tensor_names(&config) {
                let t = vb.get_unchecked(&name)?.to_dtype(DType::F32)?;
                let is_matrix = name.ends_with("proj.weight") || name == "lm_head.weight";
                if is_matrix {
                    matrices.insert(name, Arc::new(QTensor::quantize(&t, GgmlDType::Q8_0)?));
                } else {
                    if name == "model.embed_tokens.weight" && config.tie_word_embeddings {
                        matrices.insert(name.clone(), Arc::new(QTensor::quantize(&t, GgmlDType::Q8_0)?));
                    }
                    dense.insert(name, t);
                }
            }
            WeightSet::Quantized(matrices, dense)
        }
    };
    let mut hashed = vec![config_path];
    hashed.extend(weight_files);
    let sha256 = sha256_files(&hashed)?;
    Ok(Parts { config, tokenizer, chat_template, sha256, weights })
}

#[cfg(test)]
mod tests {
    /// The server shares one loaded model across worker threads.
    #[test]
    fn loaded_model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::LoadedModel>();
    }

    /// Every tensor the decoder reads has a known shape (the GGUF check
    /// would skip one without).
    #[test]
    fn every_tensor_has_a_shape() {
        let cfg = crate::model::Config::from_hf_json(
            r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 24, "vocab_size": 320,
                "attention_bias": true}"#,
        )
        .unwrap();
        for name in super::tensor_names(&cfg) {
            assert!(super::tensor_shape(&cfg, &name).is_some(), "{name}");
        }
        assert_eq!(super::tensor_shape(&cfg, "model.layers.1.self_attn.o_proj.weight"), Some(vec![64, 96]));
        assert_eq!(super::tensor_shape(&cfg, "model.layers.0.self_attn.k_proj.bias"), Some(vec![24]));
    }
}
