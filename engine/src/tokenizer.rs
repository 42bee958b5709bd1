//! Tokenizers built from GGUF metadata or a Hugging Face `tokenizer.json`.
//!
//! The GGUF path writes the same `tokenizer.json` structure that the model's
//! original Hugging Face tokenizer has and lets the `tokenizers` crate load
//! it, so encoding follows the reference implementation rather than a
//! re-implementation. candle's GGUF tokenizer helper and transformers' GGUF
//! conversion both get SmolLM2's pre-tokenizer wrong (digits after a run of
//! whitespace), which is why neither is used.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::json;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// llama.cpp's `token_type` for control tokens (`<|im_start|>` and friends).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp's `token_type` for user-defined added tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Pre-tokenizer regex of Qwen2 (`tokenizer.ggml.pre = "qwen2"`).
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Pre-tokenizer regex of Llama 3 (`tokenizer.ggml.pre = "llama-bpe"`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Ids that end a generation (the model's end-of-turn and end-of-text).
    stop_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

fn tok_err(e: impl ToString) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` keys.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = string_array(gguf.get("tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
        let merges = string_array(gguf.get("tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?;
        let types: Vec<i32> = match gguf.metadata().get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| Error::metadata("tokenizer.ggml.token_type", e))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let pre_tokenizer = match pre {
            // SmolLM2's tokenizer.json: digits split one by one, then GPT-2
            // byte-level splitting without a prefix space.
            "smollm" => json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
                ]
            }),
            "gpt2" | "default" => json!(
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ),
            "qwen2" | "llama-bpe" | "llama3" => json!({
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": {"Regex": if pre == "qwen2" { QWEN2_PATTERN } else { LLAMA3_PATTERN }},
                        "behavior": "Isolated",
                        "invert": false
                    },
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
                ]
            }),
            other => {
                return Err(Error::Tokenizer(format!(
                    "GGUF pre-tokenizer `{other}` is not supported (supported: smollm, gpt2, qwen2, llama-bpe)"
                )));
            }
        };

        let vocab: serde_json::Map<String, serde_json::Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        let added_tokens: Vec<serde_json::Value> = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let ty = types.get(i).copied().unwrap_or(1);
                (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED).then(|| {
                    json!({
                        "id": i, "content": t, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false,
                        "special": ty == TOKEN_TYPE_CONTROL
                    })
                })
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges
            }
        });
        let inner: tokenizers::Tokenizer = spec.to_string().parse().map_err(tok_err)?;

        let token_at = |key: &str| -> Option<String> {
            let v = gguf.metadata().get(key)?.to_u32().ok()?;
            tokens.get(v as usize).cloned()
        };
        let bos_token = token_at("tokenizer.ggml.bos_token_id");
        let eos_token = token_at("tokenizer.ggml.eos_token_id");
        let mut tok = Self { inner, bos_token, eos_token, stop_ids: Vec::new() };
        tok.stop_ids = tok.default_stop_ids(&[]);
        Ok(tok)
    }

    /// Loads a Hugging Face `tokenizer.json`; `bos`/`eos` come from
    /// `tokenizer_config.json`, extra stop ids from `generation_config.json`.
    pub fn from_hf_file(
        path: &Path,
        bos_token: Option<String>,
        eos_token: Option<String>,
        extra_stop_ids: &[u32],
    ) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let mut tok = Self { inner, bos_token, eos_token, stop_ids: Vec::new() };
        tok.stop_ids = tok.default_stop_ids(extra_stop_ids);
        Ok(tok)
    }

    fn default_stop_ids(&self, extra: &[u32]) -> Vec<u32> {
        let mut ids: Vec<u32> = extra.to_vec();
        for t in [self.eos_token.as_deref(), Some("<|im_end|>"), Some("<|endoftext|>")].into_iter().flatten() {
            if let Some(id) = self.inner.token_to_id(t)
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        ids
    }

    /// Token ids of `text`, with special tokens recognised but nothing
    /// added: chat templates already write any BOS they want.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode_fast(text, false).map_err(tok_err)?.get_ids().to_vec())
    }

    /// The exact text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Ids at which generation stops.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn string_array(v: &Value, key: &str) -> Result<Vec<String>> {
    v.to_vec()
        .map_err(|e| Error::metadata(key, e))?
        .iter()
        .map(|s| s.to_string().cloned().map_err(|e| Error::metadata(key, e)))
        .collect()
}
