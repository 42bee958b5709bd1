//! Loading: metadata recorded, bad files rejected with clear errors, and
//! Hugging Face directories (Llama and Qwen2) giving the GGUF's logits.

mod common;

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use rlt_engine::Error;
use rlt_engine::load::{WeightMode, load_model};
use rlt_engine::model::Architecture;

#[test]
fn records_sha256_architecture_and_config() {
    let lm = common::f32_model();
    assert_eq!(lm.sha256, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    assert_eq!(lm.architecture, Architecture::Llama);
    let c = &lm.config;
    assert_eq!((c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads), (30, 576, 9, 3));
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.max_position_embeddings, 8192);
    // The special tokens its chat template sees are the ones transformers
    // reads from this GGUF (recorded in the template fixture).
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("chat_template_features.json")).unwrap())
            .unwrap();
    let want: rlt_engine::chat_template::SpecialTokens =
        serde_json::from_value(fixture["special_tokens"].clone()).unwrap();
    assert_eq!(lm.chat_template.as_ref().unwrap().special_tokens(), &want);
    assert_eq!(want.get("pad_token"), Some("<|im_end|>"));
}

#[test]
fn debug_output_summarises_instead_of_printing_weights() {
    // A model in a panic message or a debug log must not print 500 MB of
    // weights (it did: the packed matrices and RoPE tables were derived).
    for lm in [common::f32_model(), common::q8_model()] {
        let text = format!("{lm:?}");
        assert!(text.len() < 20_000, "{} bytes of Debug output", text.len());
        assert!(text.contains("hidden: 576"), "{}", &text[..text.len().min(400)]);
        let mut cache = lm.model.new_cache(vec![0]);
        let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
        lm.model.forward_cached(&ids, &mut cache).unwrap();
        assert!(format!("{cache:?}").len() < 20_000);
    }
}

#[test]
fn missing_and_corrupt_files_are_clear_errors() {
    let dir = common::fresh_dir("bad");
    let missing = dir.join("nope.gguf");
    let err = load_model(&missing, WeightMode::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::ModelNotFound(_)), "{err}");
    assert!(err.to_string().contains("nope.gguf"));

    let short = dir.join("short.gguf");
    std::fs::write(&short, b"GGUF\x03\x00").unwrap();
    let err = load_model(&short, WeightMode::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("ends inside its header (6 bytes)"), "{err}");

    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a gguf file at all").unwrap();
    let err = load_model(&garbage, WeightMode::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::CorruptGguf { .. }), "{err}");

    // A real header whose tensor data is cut off.
    let truncated = dir.join("truncated.gguf");
    let bytes = std::fs::read(common::model_path()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_model(&truncated, WeightMode::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::CorruptGguf { .. }), "{err}");

    let empty_dir = dir.join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let err = load_model(&empty_dir, WeightMode::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::BadModelDir { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A config.json that disagrees with its weights names the fields behind
/// the shape it expected, in every weight mode, before anything loads.
#[test]
fn config_that_disagrees_with_the_weights_names_its_fields() {
    let src = common::fixture("tiny_models/llama");
    let dir = common::fresh_dir("hf-shapes");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    for (from, to, want) in [
        (
            r#""intermediate_size": 160"#,
            r#""intermediate_size": 128"#,
            "`model.layers.0.mlp.gate_proj.weight` has shape [160, 64], but config.json's intermediate_size 128, \
             hidden_size 64 imply [128, 64]",
        ),
        (
            r#""num_key_value_heads": 1"#,
            r#""num_key_value_heads": 2"#,
            "num_key_value_heads 2, head_dim 24, hidden_size 64 imply [48, 64]",
        ),
        (
            // Without head_dim, transformers derives it: 64 / 4 = 16.
            r#""head_dim": 24,"#,
            "",
            "num_attention_heads 4, head_dim 16 (hidden_size / num_attention_heads, as it gives no head_dim), \
             hidden_size 64 imply [64, 64]",
        ),
        (
            r#""num_hidden_layers": 2"#,
            r#""num_hidden_layers": 3"#,
            "lack tensor `model.layers.2.input_layernorm.weight`",
        ),
    ] {
        assert!(config.contains(from), "{from}");
        std::fs::write(dir.join("config.json"), config.replace(from, to)).unwrap();
        for mode in [WeightMode::F32, WeightMode::Quantized] {
            let err = load_model(&dir, mode, &Device::Cpu).unwrap_err();
            assert!(matches!(err, Error::BadModelDir { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = common::fresh_dir("arch");
    let path = dir.join("mamba.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let arch = gguf_file::Value::String("mamba".into());
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &[]).unwrap();
    drop(f);
    let err = load_model(&path, WeightMode::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::UnsupportedArchitecture(ref a) if a == "mamba"), "{err}");
    assert!(err.to_string().contains("mamba"));
    std::fs::remove_dir_all(&dir).unwrap();
}

// Elsewhere the memory left cannot be read and nothing is refused.
#[cfg(target_os = "linux")]
#[test]
fn weights_larger_than_memory_are_refused_before_loading() {
    // A Llama of 400 billion parameters (Llama 3.1 405B's shape): its
    // config alone, no weight files. f32 would take 1.6 TB (1,512 GiB), more than any
    // machine this runs on; the check comes before the weights are looked for.
    let dir = common::fresh_dir("huge");
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
        "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = load_model(&dir, WeightMode::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::InsufficientMemory(_)), "{err}");
    assert!(err.to_string().contains("at least 1511.9 GiB with f32 weights"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes the GGUF's weights as a Hugging Face directory.
fn write_hf_dir(dir: &std::path::Path, model_type: &str, with_bias: bool) {
    let lm = common::f32_model();
    let mut gguf = rlt_engine::gguf::GgufFile::open(&common::model_path()).unwrap();
    let cfg = lm.config.clone();
    let mut tensors: HashMap<String, Tensor> = gguf.dense_tensors(&cfg, &Device::Cpu).unwrap();
    if with_bias {
        for i in 0..cfg.num_hidden_layers {
            for (p, n) in [("q_proj", 576), ("k_proj", 192), ("v_proj", 192)] {
                tensors.insert(
                    format!("model.layers.{i}.self_attn.{p}.bias"),
                    Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap(),
                );
            }
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    lm.tokenizer.inner().save(dir.join("tokenizer.json"), false).unwrap();
    let tok_cfg = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "pad_token": {"content": "<|endoftext|>", "special": true},
        "unk_token": null,
        "chat_template": lm.chat_template.as_ref().unwrap().source(),
    });
    std::fs::write(dir.join("tokenizer_config.json"), tok_cfg.to_string()).unwrap();
}

#[test]
fn hugging_face_directories_load_like_the_gguf() {
    let gguf = common::f32_model();
    let ids: Vec<u32> = gguf.tokenizer.encode("<|im_start|>user\nHi 42<|im_end|>\n").unwrap();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let want = gguf.model.forward(&input, &[0]).unwrap();
    for (model_type, bias, arch) in [("llama", false, Architecture::Llama), ("qwen2", true, Architecture::Qwen2)] {
        let dir = common::fresh_dir(model_type);
        write_hf_dir(&dir, model_type, bias);
        let hf = load_model(&dir, WeightMode::F32, &Device::Cpu).unwrap();
        assert_eq!(hf.architecture, arch);
        assert_eq!(hf.config.attention_bias, bias);
        assert_eq!(hf.sha256.len(), 64);
        assert_eq!(hf.tokenizer.encode("<|im_start|>user\nHi 42<|im_end|>\n").unwrap(), ids);
        assert_eq!(hf.tokenizer.eos_token(), Some("<|im_end|>"));
        let special = hf.chat_template().unwrap().special_tokens();
        assert_eq!(special.get("pad_token"), Some("<|endoftext|>"));
        assert_eq!((special.get("bos_token"), special.get("unk_token")), (Some("<|im_start|>"), None));
        let got = hf.model.forward(&input, &[0]).unwrap();
        let diff =
            (got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{model_type}: max diff {diff}");
        let msgs = [rlt_engine::chat_template::Message::user("Hi")];
        let ending = rlt_engine::chat_template::Ending::GenerationPrompt;
        assert_eq!(
            hf.chat_template().unwrap().render(&msgs, ending).unwrap(),
            gguf.chat_template().unwrap().render(&msgs, ending).unwrap()
        );
        // Quantized from a directory: 8-bit blocks, close to f32 (the GGUF's
        // own quantized path, with exact weights and 8-bit activations,
        // differs by about 0.3 on average over the whole vocabulary).
        let q = load_model(&dir, WeightMode::Quantized, &Device::Cpu).unwrap();
        let got = q.model.forward(&input, &[0]).unwrap();
        let diff = (got - &want).unwrap().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 0.6, "{model_type} quantized: mean logit diff {diff}");
        // Missing weights are named.
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let err = load_model(&dir, WeightMode::F32, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
