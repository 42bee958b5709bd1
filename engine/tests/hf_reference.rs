//! Hugging Face directories (and GGUFs) against transformers: two tiny
//! random models saved by `save_pretrained` (tests/fixtures/tiny_models,
//! made by scripts/reference/make_tiny_models.py, with the Llama also
//! written as llama.cpp's converter would) cover what the SmolLM2 GGUF does
//! not: Qwen2's q/k/v biases, bf16 checkpoints, untied lm_heads, Llama 3
//! RoPE scaling, an explicit head_dim, one key/value head for four query
//! heads, Llama's attention_bias (which includes o_proj), YaRN and linear
//! RoPE scaling on the same weights (as configs and as GGUF keys), and both
//! transformers 5's `rope_parameters` and transformers 4's
//! `rope_theta`/`rope_scaling`. Every path of the decoder (the fused CPU
//! inference, the plain training graph, the KV cache, padded batches and
//! the 8-bit weights) must reproduce transformers' f32 logits.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rlt_engine::chat_template::{Ending, Message};
use rlt_engine::load::{LoadedModel, WeightMode, load_model, load_trainable};
use rlt_engine::logprobs::token_logprobs;
use rlt_engine::model::{Architecture, Model};

use common::{Position, check_logit_rows, check_next_logprobs, logsumexp};

/// Tighter than the 1e-3 the engine promises: on these small models every
/// path agrees with transformers to ~3e-5, so 2e-4 still catches small
/// slips (RoPE frequencies rounded to bf16 moved logits by 4e-5 to 0.15).
const TOL: f32 = 2e-4;

#[derive(serde::Deserialize)]
struct Reference {
    probe_ids: Vec<usize>,
    sequences: Vec<Sequence>,
    tokenizer: Vec<Tokenized>,
    chat: String,
}

#[derive(serde::Deserialize)]
struct Sequence {
    name: String,
    ids: Vec<u32>,
    positions: Vec<Position>,
}

#[derive(serde::Deserialize)]
struct Tokenized {
    text: String,
    ids: Vec<u32>,
}

fn tiny(name: &str) -> PathBuf {
    common::fixture("tiny_models").join(name)
}

fn reference_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(tiny("reference.json")).unwrap()).unwrap()
}

fn reference(name: &str) -> Reference {
    serde_json::from_value(reference_json()[name].take()).unwrap()
}

/// A tiny model's weights under another RoPE scaling (see the script).
#[derive(serde::Deserialize)]
struct Variant {
    base: String,
    /// transformers 5's form: `rope_theta` and the scaling together.
    rope_parameters: serde_json::Value,
    /// Whether `{name}.gguf` states the same scaling in llama.cpp's keys.
    gguf: bool,
    sequences: Vec<Sequence>,
}

/// A variant, and its base's reference with the variant's logits.
fn variant(name: &str) -> (Variant, Reference) {
    let mut v: Variant = serde_json::from_value(reference_json()["variants"][name].take()).unwrap();
    let mut fx = reference(&v.base);
    fx.sequences = std::mem::take(&mut v.sequences);
    (v, fx)
}

/// Checks rows of logits `[positions, vocab]` against the reference.
fn check_logits(rows: &[Vec<f32>], fx: &Reference, seq: &Sequence, what: &str) {
    check_logit_rows(rows, &seq.positions, &fx.probe_ids, TOL, &format!("{what}: {}", seq.name));
}

fn row(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn full_logits(m: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    m.forward(&row(ids), &[0]).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
}

/// The logits of every position, fed to the cache as a prompt of `split`
/// tokens and then one token per step.
fn cached_logits(m: &Model, ids: &[u32], split: usize) -> Vec<Vec<f32>> {
    let mut cache = m.new_cache(vec![0]);
    let h = m.forward_cached(&row(&ids[..split]), &mut cache).unwrap();
    let mut rows: Vec<Vec<f32>> = m.logits(&h).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    for &t in &ids[split..] {
        let h = m.forward_cached(&row(&[t]), &mut cache).unwrap();
        rows.extend(m.logits(&h).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap());
    }
    rows
}

/// Every inference path of a loaded f32 model against the reference.
fn check_model(lm: &LoadedModel, fx: &Reference, what: &str) {
    for seq in &fx.sequences {
        check_logits(&full_logits(&lm.model, &seq.ids), fx, seq, what);
        let split = seq.ids.len() / 3;
        check_logits(&cached_logits(&lm.model, &seq.ids, split), fx, seq, &format!("{what}, cached"));
    }
    // Batched and padded together, at two temperatures.
    let seqs: Vec<Vec<u32>> = fx.sequences.iter().map(|s| s.ids.clone()).collect();
    for (temp, t07) in [(1.0, false), (0.7, true)] {
        let lps = token_logprobs(&lm.model, &seqs, temp).unwrap();
        for (seq, lp) in fx.sequences.iter().zip(&lps) {
            assert_eq!(lp.len(), seq.ids.len() - 1);
            check_next_logprobs(lp, &seq.positions, t07, TOL, &format!("{what}, batched log-prob {}", seq.name));
        }
    }
}

/// Every path of the model at `path` (a directory or a GGUF) against the
/// reference `fx` (of the tiny model `name`).
fn check_model_file(path: &Path, fx: &Reference, name: &str, arch: Architecture) -> LoadedModel {
    let lm = load_model(path, WeightMode::F32, &Device::Cpu).unwrap();
    assert_eq!(lm.architecture, arch);
    check_model(&lm, fx, name);

    // The training graph (plain candle ops) on the same weights.
    let (trainable, _vars) = load_trainable(path, &Device::Cpu).unwrap();
    for seq in &fx.sequences {
        check_logits(&full_logits(&trainable.model, &seq.ids), fx, seq, &format!("{name}, training graph"));
    }

    // 8-bit weights: close, not equal.
    let q = load_model(path, WeightMode::Quantized, &Device::Cpu).unwrap();
    let seq = &fx.sequences[1];
    let rows = full_logits(&q.model, &seq.ids);
    let mut diff = 0.0f32;
    for (row, r) in rows.iter().zip(&seq.positions) {
        diff += (logsumexp(row) - r.logsumexp).abs();
    }
    let diff = diff / rows.len() as f32;
    assert!(diff < 0.1 && diff > 0.0, "{name} quantized: mean |Δ logsumexp| {diff}");

    let prompt = lm.chat_template().unwrap().render(&[Message::user("Hi")], Ending::GenerationPrompt).unwrap();
    assert_eq!(prompt, fx.chat);
    lm
}

fn check_directory(dir: &Path, name: &str, arch: Architecture) {
    let fx = reference(name);
    let lm = check_model_file(dir, &fx, name, arch);
    for t in &fx.tokenizer {
        assert_eq!(lm.tokenizer.encode(&t.text).unwrap(), t.ids, "{name}: {:?}", t.text);
        assert_eq!(lm.tokenizer.decode(&t.ids).unwrap(), t.text);
    }
}

#[test]
fn qwen2_directory_matches_transformers() {
    check_directory(&tiny("qwen2"), "qwen2", Architecture::Qwen2);
}

#[test]
fn llama_directory_matches_transformers() {
    check_directory(&tiny("llama"), "llama", Architecture::Llama);
}

#[test]
fn llama_gguf_with_rope_freqs_matches_transformers() {
    // The tiny Llama as llama.cpp's converter writes it: permuted q/k rows
    // and biases, and the Llama 3 scaling as per-frequency divisors.
    let lm = check_model_file(&tiny("llama.gguf"), &reference("llama"), "llama", Architecture::Llama);
    assert_eq!(lm.config.rope_freq_factors.as_ref().map(Vec::len), Some(12));
    assert!(lm.config.rope_scaling.is_none());
}

#[test]
fn qwen2_bf16_gguf_matches_transformers() {
    let lm = check_model_file(&tiny("qwen2.gguf"), &reference("qwen2"), "qwen2", Architecture::Qwen2);
    assert!(lm.config.attention_bias && !lm.config.output_bias);
}

/// A copy of the tiny Llama GGUF with metadata keys set (or removed, for
/// `None`) and tensors replaced or added (or removed, for `None`).
fn edited_gguf(tag: &str, keys: &[(&str, Option<Value>)], tensors: &[(&str, Option<QTensor>)]) -> PathBuf {
    let mut file = std::fs::File::open(tiny("llama.gguf")).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut all: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| (name.clone(), content.tensor(&mut file, name, &Device::Cpu).unwrap()))
        .collect();
    let mut metadata = content.metadata.clone();
    for (k, v) in keys {
        match v {
            Some(v) => metadata.insert(k.to_string(), v.clone()),
            None => metadata.remove(*k),
        };
    }
    for (name, t) in tensors {
        all.retain(|(n, _)| n != name);
        if let Some(t) = t {
            let data = t.dequantize(&Device::Cpu).unwrap();
            all.push((name.to_string(), QTensor::quantize(&data, t.dtype()).unwrap()));
        }
    }
    let out = std::env::temp_dir().join(format!("rlt-tiny-{}-{tag}.gguf", std::process::id()));
    let mut w = std::fs::File::create(&out).unwrap();
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = all.iter().map(|(n, t)| (n.as_str(), t)).collect();
    gguf_file::write(&mut w, &meta, &refs).unwrap();
    out
}

fn f32_tensor(values: &[f32]) -> Option<QTensor> {
    let t = Tensor::new(values, &Device::Cpu).unwrap();
    Some(QTensor::quantize(&t, GgmlDType::F32).unwrap())
}

#[test]
fn gguf_settings_the_decoder_cannot_run_are_refused() {
    let factor = |k: &str, f: f32| (k.to_string(), Some(Value::F32(f)));
    let kind = |s: &str| ("llama.rope.scaling.type".to_string(), Some(Value::String(s.into())));
    // (case, metadata, tensors, key named in the error, or None if it loads)
    type Case<'a> = (&'a str, Vec<(String, Option<Value>)>, Vec<(&'a str, Option<QTensor>)>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("longrope", vec![kind("longrope")], vec![], Some("llama.rope.scaling.type")),
        ("yarn_no_factor", vec![kind("yarn")], vec![], Some("llama.rope.scaling.factor")),
        // The original context defaults to the file's, as in llama.cpp.
        (
            "yarn_no_context",
            vec![kind("yarn"), factor("llama.rope.scaling.factor", 4.0)],
            vec![("rope_freqs.weight", None)],
            None,
        ),
        // llama.cpp's own YaRN knobs, which transformers lacks.
        (
            "yarn_ext",
            vec![
                kind("yarn"),
                factor("llama.rope.scaling.factor", 4.0),
                factor("llama.rope.scaling.yarn_ext_factor", 0.5),
            ],
            vec![],
            Some("llama.rope.scaling.yarn_ext_factor"),
        ),
        // β as the converter writes them: at llama.cpp's values they load,
        // others are refused (llama.cpp would ignore them).
        (
            "yarn_betas",
            vec![
                kind("yarn"),
                factor("llama.rope.scaling.factor", 4.0),
                factor("llama.rope.scaling.yarn_beta_fast", 32.0),
                factor("llama.rope.scaling.yarn_beta_slow", 1.0),
            ],
            vec![("rope_freqs.weight", None)],
            None,
        ),
        (
            "yarn_beta_other",
            vec![
                kind("yarn"),
                factor("llama.rope.scaling.factor", 4.0),
                factor("llama.rope.scaling.yarn_beta_slow", 2.0),
            ],
            vec![],
            Some("llama.rope.scaling.yarn_beta_slow"),
        ),
        // As llama.cpp: a zero factor falls back to the older key.
        (
            "zero_then_linear",
            vec![factor("llama.rope.scaling.factor", 0.0), factor("llama.rope.scale_linear", 2.0)],
            vec![],
            Some("rope_freqs.weight"),
        ),
        (
            "factor_type",
            vec![("llama.rope.scaling.factor".into(), Some(Value::String("2".into())))],
            vec![],
            Some("llama.rope.scaling.factor"),
        ),
        (
            "yarn",
            vec![
                kind("yarn"),
                factor("llama.rope.scaling.factor", 4.0),
                ("llama.rope.scaling.original_context_length".into(), Some(Value::U32(64))),
            ],
            vec![("rope_freqs.weight", None)],
            None,
        ),
        (
            "linear",
            vec![kind("linear"), factor("llama.rope.scaling.factor", 2.0)],
            vec![("rope_freqs.weight", None)],
            None,
        ),
        // Scaled twice: by the factor and by the Llama 3 divisors.
        (
            "linear_and_freqs",
            vec![kind("linear"), factor("llama.rope.scaling.factor", 2.0)],
            vec![],
            Some("rope_freqs.weight"),
        ),
        // llama.cpp: a factor without a type is linear scaling.
        ("untyped", vec![factor("llama.rope.scale_linear", 4.0)], vec![], Some("rope_freqs.weight")),
        (
            "negative",
            vec![factor("llama.rope.scale_linear", -4.0)],
            vec![("rope_freqs.weight", None)],
            Some("llama.rope.scale_linear"),
        ),
        (
            "yarn_nan",
            vec![kind("yarn"), factor("llama.rope.scaling.factor", f32::NAN)],
            vec![],
            Some("llama.rope.scaling.factor"),
        ),
        ("none", vec![kind("none"), factor("llama.rope.scaling.factor", 2.0)], vec![], None),
        ("unit", vec![kind("linear"), factor("llama.rope.scaling.factor", 1.0)], vec![], None),
        (
            "rot",
            vec![("llama.rope.dimension_count".into(), Some(Value::U32(16)))],
            vec![],
            Some("llama.rope.dimension_count"),
        ),
        ("short_freqs", vec![], vec![("rope_freqs.weight", f32_tensor(&[1.0; 5]))], Some("rope_freqs.weight")),
        ("zero_freq", vec![], vec![("rope_freqs.weight", f32_tensor(&[0.0; 12]))], Some("rope_freqs.weight")),
        // A bias of the wrong length is named as the file names it.
        ("q_bias_shape", vec![], vec![("blk.0.attn_q.bias", f32_tensor(&[0.5; 10]))], Some("blk.0.attn_q.bias")),
        // A bias llama.cpp would add and the decoder would not.
        ("mlp_bias", vec![], vec![("blk.1.ffn_up.bias", f32_tensor(&[0.5; 160]))], Some("blk.1.ffn_up.bias")),
    ];
    for (tag, keys, tensors, refused) in cases {
        let keys: Vec<(&str, Option<Value>)> = keys.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let path = edited_gguf(tag, &keys, &tensors);
        match (load_model(&path, WeightMode::F32, &Device::Cpu), refused) {
            (Ok(_), None) => {}
            (Ok(_), Some(key)) => panic!("{tag}: loaded, expected an error naming {key}"),
            (Err(e), None) => panic!("{tag}: {e}"),
            (Err(e), Some(key)) => assert!(e.to_string().contains(&format!("`{key}`")), "{tag}: {e}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
}

/// A copy of a fixture directory with its config.json changed.
fn with_config(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = tiny(name);
    let dir = common::fresh_dir(&format!("hf-{name}-{:?}", std::thread::current().id()));
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
    dir
}

#[test]
fn linear_and_yarn_rope_scaling_match_transformers() {
    // (variant, architecture, the context it then accepts)
    let cases = [
        // YaRN as Qwen2.5's model card adds it: factor 4 on the config's own
        // context, which grows to 512 × 4.
        ("qwen2-yarn", Architecture::Qwen2, 2048),
        // Every YaRN parameter given (mscale over mscale_all_dim, no
        // rounding of the ramp): 48 × 3 < 512, which stays.
        ("llama-yarn", Architecture::Llama, 512),
        // A linear config states its extended context itself.
        ("llama-linear", Architecture::Llama, 512),
    ];
    for (name, arch, context) in cases {
        let (v, fx) = variant(name);
        let dir = with_config(&v.base, |cfg| cfg["rope_parameters"] = v.rope_parameters.clone());
        let lm = check_model_file(&dir, &fx, name, arch);
        assert_eq!(lm.config.max_position_embeddings, context, "{name}");
        std::fs::remove_dir_all(&dir).unwrap();

        // transformers 4's form of the same config.
        let dir = with_config(&v.base, |cfg| {
            let mut rope = v.rope_parameters.clone();
            cfg["rope_theta"] = rope.as_object_mut().unwrap().remove("rope_theta").unwrap();
            cfg["rope_scaling"] = rope;
            cfg.as_object_mut().unwrap().remove("rope_parameters");
        });
        let lm = load_model(&dir, WeightMode::F32, &Device::Cpu).unwrap();
        let seq = &fx.sequences[1];
        check_logits(&full_logits(&lm.model, &seq.ids), &fx, seq, &format!("{name}, transformers 4 config"));
        std::fs::remove_dir_all(&dir).unwrap();

        if v.gguf {
            let lm = check_model_file(&tiny(&format!("{name}.gguf")), &fx, &format!("{name}.gguf"), arch);
            assert_eq!(lm.config.max_position_embeddings, context, "{name}.gguf");
        }
    }
}

#[test]
fn transformers_4_configs_give_the_same_model() {
    // transformers 4 wrote `rope_theta` at the top and the scaling as
    // `rope_scaling` (the released Qwen2.5 and Llama 3 checkpoints).
    for name in ["qwen2", "llama"] {
        let dir = with_config(name, |cfg| {
            let mut rope = cfg.as_object_mut().unwrap().remove("rope_parameters").unwrap();
            let theta = rope.as_object_mut().unwrap().remove("rope_theta").unwrap();
            cfg["rope_theta"] = theta;
            if rope["rope_type"] != "default" {
                cfg["rope_scaling"] = rope;
            }
        });
        let fx = reference(name);
        let lm = load_model(&dir, WeightMode::F32, &Device::Cpu).unwrap();
        let seq = &fx.sequences[1];
        check_logits(&full_logits(&lm.model, &seq.ids), &fx, seq, &format!("{name}, transformers 4 config"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn configs_the_decoder_cannot_run_are_refused() {
    type Edit = fn(&mut serde_json::Value);
    // (model, edit, key named in the error, or None if it still loads)
    let cases: [(&str, Edit, Option<&str>); 18] = [
        // Values that ran and gave NaN, or dropped the model's scaling.
        ("llama", |c| c["rope_parameters"]["rope_theta"] = (-1.0).into(), Some("rope_theta")),
        ("qwen2", |c| c["rms_norm_eps"] = (-1.0).into(), Some("rms_norm_eps")),
        ("llama", |c| c["rope_scaling"] = "linear".into(), Some("rope_scaling")),
        ("llama", |c| c["rope_parameters"] = 7.into(), Some("rope_parameters")),
        ("qwen2", |c| c["hidden_size"] = 63.into(), Some("hidden_size")),
        ("llama", |c| c["mlp_bias"] = true.into(), Some("mlp_bias")),
        ("llama", |c| c["hidden_act"] = "gelu".into(), Some("hidden_act")),
        ("llama", |c| c["rope_parameters"]["rope_type"] = "dynamic".into(), Some("rope_parameters")),
        // A legacy rope_scaling wins over rope_parameters, as in transformers 5.
        ("llama", |c| c["rope_scaling"] = serde_json::json!({"type": "longrope", "factor": 4.0}), Some("rope_scaling")),
        ("llama", |c| c["rope_parameters"]["high_freq_factor"] = 1.0.into(), Some("rope_parameters")),
        // transformers requires a YaRN factor.
        (
            "llama",
            |c| c["rope_scaling"] = serde_json::json!({"type": "yarn", "original_max_position_embeddings": 64}),
            Some("rope_scaling"),
        ),
        (
            "llama",
            |c| {
                c["rope_scaling"] =
                    serde_json::json!({"type": "yarn", "factor": 0, "original_max_position_embeddings": 64})
            },
            Some("rope_scaling"),
        ),
        ("llama", |c| c["rope_scaling"] = serde_json::json!({"type": "linear"}), Some("rope_scaling")),
        ("llama", |c| c["rope_scaling"] = serde_json::json!({"type": "linear", "factor": -2.0}), Some("rope_scaling")),
        (
            "qwen2",
            |c| {
                c["use_sliding_window"] = true.into();
                c["sliding_window"] = 64.into();
                c["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
            },
            Some("use_sliding_window"),
        ),
        // transformers 4: layers from max_window_layers on slide.
        (
            "qwen2",
            |c| {
                c.as_object_mut().unwrap().remove("layer_types");
                c["use_sliding_window"] = true.into();
                c["sliding_window"] = 64.into();
                c["max_window_layers"] = 1.into();
            },
            Some("use_sliding_window"),
        ),
        // A window as wide as the context changes nothing.
        (
            "qwen2",
            |c| {
                c["use_sliding_window"] = true.into();
                c["sliding_window"] = 4096.into();
                c["layer_types"] = serde_json::json!(["sliding_attention", "sliding_attention"]);
            },
            None,
        ),
        // transformers' Qwen2 ignores mlp_bias.
        ("qwen2", |c| c["mlp_bias"] = true.into(), None),
    ];
    for (i, (name, edit, refused)) in cases.into_iter().enumerate() {
        let dir = with_config(name, edit);
        match (load_model(&dir, WeightMode::F32, &Device::Cpu), refused) {
            (Ok(lm), None) => {
                let fx = reference(name);
                let seq = &fx.sequences[0];
                check_logits(&full_logits(&lm.model, &seq.ids), &fx, seq, &format!("case {i}"));
            }
            (Ok(_), Some(key)) => panic!("case {i} ({name}) loaded, expected an error naming {key}"),
            (Err(e), None) => panic!("case {i} ({name}): {e}"),
            (Err(e), Some(key)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("`config.json {key}`")) || msg.contains(&format!("`{key}`")),
                    "case {i}: {msg}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn yarn_as_qwen2_5_model_card_adds_it_grows_the_context() {
    use rlt_engine::model::{Config, RopeScaling};
    // Qwen2.5-7B-Instruct's config.json (transformers 4) with the
    // `rope_scaling` its model card says to add for long texts.
    let mut cfg = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
        "sliding_window": 131072, "max_window_layers": 28, "use_sliding_window": false,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}
    });
    let parsed = Config::from_hf_json(&cfg.to_string()).unwrap();
    assert_eq!(parsed.max_position_embeddings, 131072);
    let Some(RopeScaling::Yarn(y)) = &parsed.rope_scaling else { panic!("{:?}", parsed.rope_scaling) };
    assert!((y.attention_factor - (1.0 + 0.1 * 4f64.ln())).abs() < 1e-12);
    assert_eq!((y.beta_fast, y.beta_slow, y.truncate), (32.0, 1.0, true));

    // An explicit attention factor is taken as is.
    cfg["rope_scaling"]["attention_factor"] = 0.8.into();
    let parsed = Config::from_hf_json(&cfg.to_string()).unwrap();
    let Some(RopeScaling::Yarn(y)) = &parsed.rope_scaling else { panic!("{:?}", parsed.rope_scaling) };
    assert_eq!(y.attention_factor, 0.8);

    // Without an original context, transformers takes the config's; a null
    // factor is the context's growth over it (here 1: no scaling at all).
    cfg["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
    let parsed = Config::from_hf_json(&cfg.to_string()).unwrap();
    let Some(RopeScaling::Yarn(y)) = &parsed.rope_scaling else { panic!("{:?}", parsed.rope_scaling) };
    assert_eq!((y.original_max_position_embeddings, parsed.max_position_embeddings), (32768, 131072));
    cfg["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": null, "original_max_position_embeddings": 8192});
    let parsed = Config::from_hf_json(&cfg.to_string()).unwrap();
    let Some(RopeScaling::Yarn(y)) = &parsed.rope_scaling else { panic!("{:?}", parsed.rope_scaling) };
    assert_eq!((y.factor, y.attention_factor, parsed.max_position_embeddings), (4.0, 1.0 + 0.1 * 4f64.ln(), 32768));

    // A top-level original context (Phi-3 style) wins, as in transformers.
    cfg["original_max_position_embeddings"] = 4096.into();
    cfg["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192});
    let parsed = Config::from_hf_json(&cfg.to_string()).unwrap();
    let Some(RopeScaling::Yarn(y)) = &parsed.rope_scaling else { panic!("{:?}", parsed.rope_scaling) };
    assert_eq!((y.original_max_position_embeddings, parsed.max_position_embeddings), (4096, 32768));
    // Llama 3 scaling without one takes the config's context.
    cfg.as_object_mut().unwrap().remove("original_max_position_embeddings");
    cfg["rope_scaling"] =
        serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0});
    let parsed = Config::from_hf_json(&cfg.to_string()).unwrap();
    let Some(RopeScaling::Llama3(s)) = &parsed.rope_scaling else { panic!("{:?}", parsed.rope_scaling) };
    assert_eq!(s.original_max_position_embeddings, 32768);

    // A garbage factor cannot ask for tables of every position up to it.
    cfg["rope_scaling"] =
        serde_json::json!({"type": "yarn", "factor": 1e12, "original_max_position_embeddings": 32768});
    let e = Config::from_hf_json(&cfg.to_string()).unwrap_err().to_string();
    assert!(e.contains("`max_position_embeddings`") && e.contains("beyond"), "{e}");
}

#[test]
fn config_json_must_be_an_object() {
    let e = rlt_engine::model::Config::from_hf_json("[]").unwrap_err().to_string();
    assert!(e.contains("`config.json`: must be a JSON object"), "{e}");
}
