//! Reading GGUF files: metadata, model config, and weights under Hugging
//! Face tensor names.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::{Architecture, Config, RopeScaling, YarnRopeScaling};

/// llama.cpp's per-frequency RoPE divisors (how its converter stores Llama
/// 3's scaling).
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Quantized matrices and dense small tensors, both under Hugging Face names.
pub type QuantizedTensors = (HashMap<String, Arc<QTensor>>, HashMap<String, Tensor>);

/// An open GGUF file whose header (metadata and tensor index) has been read.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| {
            let mut reason = crate::error::candle_reason(&e);
            // candle passes on the reader's "failed to fill whole buffer".
            if reason.contains("failed to fill whole buffer") {
                let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                reason = format!("the file ends inside its header ({len} bytes)");
            }
            Error::CorruptGguf { path: path.to_path_buf(), reason }
        })?;
        Ok(Self { path: path.to_path_buf(), content, reader })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn get(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| Error::metadata(key, "missing"))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        Ok(self.get(key)?.to_string().map_err(|e| Error::metadata(key, e))?.as_str())
    }

    fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => return Err(Error::metadata(key, format!("not a count: {other:?}"))),
        };
        Ok(n as usize)
    }

    fn get_f64(&self, key: &str) -> Result<f64> {
        match self.get(key)? {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            other => Err(Error::metadata(key, format!("not a number: {other:?}"))),
        }
    }

    /// `general.architecture`, checked against the families we implement.
    pub fn architecture(&self) -> Result<Architecture> {
        Architecture::parse(self.get_str("general.architecture")?)
    }

    /// The decoder config, from the `{arch}.*` keys (and the `rope_freqs`
    /// tensor, where llama.cpp's converter puts Llama 3's RoPE scaling).
    pub fn config(&mut self) -> Result<Config> {
        let arch = self.architecture()?;
        let a = arch.as_str();
        let key = |k: &str| format!("{a}.{k}");
        let hidden_size = self.get_usize(&key("embedding_length"))?;
        let num_attention_heads = self.get_usize(&key("attention.head_count"))?;
        let num_key_value_heads = self.get_usize(&key("attention.head_count_kv")).unwrap_or(num_attention_heads);
        let head_dim = self.get_usize(&key("attention.key_length")).unwrap_or(hidden_size / num_attention_heads.max(1));
        let embed = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| Error::metadata("token_embd.weight", "tensor missing"))?;
        // [vocab, hidden]: candle reverses the file's innermost-first order.
        let vocab_size = *embed.shape.dims().first().ok_or_else(|| Error::metadata("token_embd.weight", "no dims"))?;
        let context = self.get_usize(&key("context_length"))?;
        let rope_scaling = self.rope_scaling(a, context)?;
        if let Ok(dims) = self.get_usize(&key("rope.dimension_count"))
            && dims != head_dim
        {
            return Err(Error::metadata(
                key("rope.dimension_count"),
                format!("RoPE on {dims} of {head_dim} head dimensions is not supported"),
            ));
        }
        // llama.cpp's Llama divides its RoPE frequencies by these (Llama 3
        // scaling); its Qwen2 ignores them.
        let rope_freq_factors = match self.content.tensor_infos.contains_key(ROPE_FREQS) {
            true if arch == Architecture::Llama => {
                let t = self.read_tensor(ROPE_FREQS, &Device::Cpu)?;
                let values = t.dequantize(&Device::Cpu).and_then(|t| t.flatten_all()?.to_vec1::<f32>());
                Some(values.map_err(|e| Error::metadata(ROPE_FREQS, crate::error::candle_reason(&e)))?)
            }
            _ => None,
        };
        let cfg = Config {
            architecture: arch,
            vocab_size,
            hidden_size,
            intermediate_size: self.get_usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.get_usize(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: self.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            max_position_embeddings: rope_scaling.as_ref().map_or(context, |s| s.context(context)),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            output_bias: self.content.tensor_infos.contains_key("blk.0.attn_output.bias"),
            rope_scaling,
            rope_freq_factors,
        };
        cfg.validate()?;
        let names = self.tensor_names(&cfg);
        self.check_all_tensors_used(&names)?;
        self.check_tensor_shapes(&names, &cfg, a)?;
        Ok(cfg)
    }

    /// The RoPE scaling llama.cpp applies from metadata (`context` is the
    /// file's context length). As in llama.cpp, the factor is
    /// `rope.scaling.factor`, or `rope.scale_linear` where that is absent or
    /// 0; a factor without a type means linear scaling, and 0 or 1 none.
    /// YaRN takes its original context from the file (default: the
    /// context). llama.cpp's converter also writes a config's β, but
    /// llama.cpp (0.3.36's, checked) runs with β 32 and 1 whatever the
    /// file says, so other values, and llama.cpp's own YaRN knobs
    /// (extrapolation mix, attention factors, log multiplier), are refused
    /// rather than run one way or the other.
    fn rope_scaling(&self, arch: &str, context: usize) -> Result<Option<RopeScaling>> {
        let key = |k: &str| format!("{arch}.rope.{k}");
        let type_key = key("scaling.type");
        let kind = match self.content.metadata.get(&type_key) {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => return Err(Error::metadata(type_key, format!("not a string: {other:?}"))),
        };
        let number = |k: &str| -> Result<Option<(String, f64)>> {
            match self.content.metadata.contains_key(k) {
                true => Ok(Some((k.to_string(), self.get_f64(k)?))),
                false => Ok(None),
            }
        };
        let factor = match number(&key("scaling.factor"))? {
            Some((_, 0.0)) => number(&key("scale_linear"))?,
            None => number(&key("scale_linear"))?,
            given => given,
        };
        let yarn = |factor: f64| -> Result<RopeScaling> {
            let set = ["yarn_ext_factor", "yarn_attn_factor", "yarn_log_multiplier", "attn_factor"]
                .map(|k| key(&format!("scaling.{k}")))
                .into_iter()
                .find(|k| self.content.metadata.contains_key(k));
            if let Some(k) = set {
                return Err(Error::metadata(k, "this YaRN parameter is not supported"));
            }
            let original_key = key("scaling.original_context_length");
            let y = YarnRopeScaling::new(
                factor,
                match self.content.metadata.contains_key(&original_key) {
                    true => self.get_usize(&original_key)?,
                    false => context,
                },
            );
            if y.original_max_position_embeddings == 0 {
                return Err(Error::metadata(original_key, "must be > 0"));
            }
            for (k, default) in [("scaling.yarn_beta_fast", y.beta_fast), ("scaling.yarn_beta_slow", y.beta_slow)] {
                if let Some((k, b)) = number(&key(k))?
                    && b != default
                {
                    return Err(Error::metadata(
                        k,
                        format!("YaRN β other than llama.cpp's {default} is not supported, got {b}"),
                    ));
                }
            }
            Ok(RopeScaling::Yarn(y))
        };
        match (kind, factor) {
            (Some("none") | Some("linear") | None, None) | (Some("none"), Some(_)) => Ok(None),
            (Some("linear") | None, Some((_, f))) if f == 0.0 || f == 1.0 => Ok(None),
            (Some("linear") | Some("yarn") | None, Some((k, f))) if !(f.is_finite() && f > 0.0) => {
                Err(Error::metadata(k, format!("a RoPE scaling factor must be a number > 0, got {f}")))
            }
            (Some("linear") | None, Some((_, factor))) => Ok(Some(RopeScaling::Linear { factor })),
            (Some("yarn"), Some((_, factor))) => yarn(factor).map(Some),
            (Some("yarn"), None) => Err(Error::metadata(key("scaling.factor"), "YaRN scaling without a factor")),
            (Some(other), _) => Err(Error::metadata(type_key, format!("RoPE scaling `{other}` is not supported"))),
        }
    }

    /// Refuses tensors the decoder would not read (biases llama.cpp applies
    /// where present, say), so a file is never run without part of itself.
    fn check_all_tensors_used(&self, names: &[(String, String)]) -> Result<()> {
        let used: std::collections::HashSet<&String> = names.iter().map(|(g, _)| g).collect();
        let mut unused: Vec<&String> =
            self.content.tensor_infos.keys().filter(|n| !used.contains(n) && n.as_str() != ROPE_FREQS).collect();
        unused.sort();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(Error::metadata(
                first.as_str(),
                format!("tensor not supported by the decoder ({} unsupported tensors in all)", unused.len()),
            )),
        }
    }

    fn read_tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        self.content.tensor(&mut self.reader, name, device).map_err(|e| Error::CorruptGguf {
            path: self.path.clone(),
            reason: format!("tensor {name}: {}", crate::error::candle_reason(&e)),
        })
    }

    /// Refuses a tensor whose shape the metadata does not imply, naming it
    /// as the file does and the metadata behind the expected shape (the
    /// loader's own error would name the Hugging Face tensor).
    fn check_tensor_shapes(&self, names: &[(String, String)], cfg: &Config, arch: &str) -> Result<()> {
        for (gguf, hf) in names {
            let (Some(info), Some(want)) = (self.content.tensor_infos.get(gguf), crate::load::tensor_shape(cfg, hf))
            else {
                continue;
            };
            // candle turns the file's innermost-first dimensions around.
            let got = info.shape.dims().to_vec();
            if got != want {
                return Err(Error::metadata(
                    gguf.as_str(),
                    format!(
                        "shape {got:?}, but {arch}.embedding_length {}, attention.head_count {}, \
                         attention.head_count_kv {}, head size {} and feed_forward_length {} imply {want:?}",
                        cfg.hidden_size,
                        cfg.num_attention_heads,
                        cfg.num_key_value_heads,
                        cfg.head_dim,
                        cfg.intermediate_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// (GGUF name, Hugging Face name) of every tensor the decoder uses.
    fn tensor_names(&self, cfg: &Config) -> Vec<(String, String)> {
        let mut names = vec![
            ("token_embd.weight".into(), "model.embed_tokens.weight".into()),
            ("output_norm.weight".into(), "model.norm.weight".into()),
        ];
        if !cfg.tie_word_embeddings {
            names.push(("output.weight".into(), "lm_head.weight".into()));
        }
        for i in 0..cfg.num_hidden_layers {
            let hf = |s: &str| format!("model.layers.{i}.{s}");
            let gg = |s: &str| format!("blk.{i}.{s}");
            let mut add = |g: &str, h: &str| names.push((gg(g), hf(h)));
            add("attn_norm.weight", "input_layernorm.weight");
            add("ffn_norm.weight", "post_attention_layernorm.weight");
            for (g, h) in
                [("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj")]
            {
                add(&format!("{g}.weight"), &format!("{h}.weight"));
                if cfg.attention_bias {
                    add(&format!("{g}.bias"), &format!("{h}.bias"));
                }
            }
            add("attn_output.weight", "self_attn.o_proj.weight");
            if cfg.output_bias {
                add("attn_output.bias", "self_attn.o_proj.bias");
            }
            add("ffn_gate.weight", "mlp.gate_proj.weight");
            add("ffn_up.weight", "mlp.up_proj.weight");
            add("ffn_down.weight", "mlp.down_proj.weight");
        }
        names
    }

    /// How many heads a tensor's rows were permuted over by llama.cpp's
    /// converter, if any. llama.cpp runs Llama with interleaved RoPE and so
    /// permutes q/k rows at conversion; Qwen2 runs with NeoX RoPE and is
    /// stored as is.
    fn permuted_heads(cfg: &Config, hf_name: &str) -> Option<usize> {
        if cfg.architecture != Architecture::Llama {
            return None;
        }
        if hf_name.contains("self_attn.q_proj") {
            Some(cfg.num_attention_heads)
        } else if hf_name.contains("self_attn.k_proj") {
            Some(cfg.num_key_value_heads)
        } else {
            None
        }
    }

    fn dense_tensor(&mut self, cfg: &Config, gguf: &str, hf: &str, device: &Device) -> Result<Tensor> {
        let q = self.read_tensor(gguf, device)?;
        let t = q.dequantize(device)?.to_dtype(DType::F32)?;
        match Self::permuted_heads(cfg, hf) {
            Some(heads) => Ok(unpermute_rows(&t, heads)?),
            None => Ok(t),
        }
    }

    /// Every weight dequantized to f32, under Hugging Face names.
    pub fn dense_tensors(&mut self, cfg: &Config, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (gguf, hf) in self.tensor_names(cfg) {
            let t = self.dense_tensor(cfg, &gguf, &hf, device)?;
            out.insert(hf, t);
        }
        Ok(out)
    }

    /// Projection matrices in the file's own block format (for decoding),
    /// plus the small tensors and the embedding table dequantized to f32.
    /// A tied output head is kept quantized under the embedding's name.
    /// Llama q/k rows are reordered block row by block row, so the values
    /// stay exactly the file's.
    pub fn quantized_tensors(&mut self, cfg: &Config, device: &Device) -> Result<QuantizedTensors> {
        let mut matrices = HashMap::new();
        let mut dense = HashMap::new();
        for (gguf, hf) in self.tensor_names(cfg) {
            let is_matrix = hf.ends_with("proj.weight") || hf == "lm_head.weight";
            let tied_head = hf == "model.embed_tokens.weight" && cfg.tie_word_embeddings;
            if !is_matrix {
                if tied_head {
                    let q = self.read_tensor(&gguf, device)?;
                    matrices.insert(hf.clone(), Arc::new(q));
                }
                let t = self.dense_tensor(cfg, &gguf, &hf, device)?;
                dense.insert(hf, t);
                continue;
            }
            let q = self.read_tensor(&gguf, device)?;
            let q = match Self::permuted_heads(cfg, &hf) {
                Some(heads) => unpermute_block_rows(&q, heads, device)?,
                None => q,
            };
            matrices.insert(hf, Arc::new(q));
        }
        Ok((matrices, dense))
    }
}

/// The HF row that each GGUF row came from, for llama.cpp's q/k permutation
/// (see [`unpermute_rows`]): `order[hf_row] = gguf_row`.
fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
    let half = rows / heads / 2;
    let mut order = Vec::with_capacity(rows);
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                order.push(h * 2 * half + 2 * j + s);
            }
        }
    }
    order
}

/// [`unpermute_rows`] on a quantized matrix: rows are whole blocks, so
/// moving their bytes keeps every value exact.
fn unpermute_block_rows(q: &QTensor, heads: usize, device: &Device) -> Result<QTensor> {
    let (rows, cols) = q.shape().dims2()?;
    let dtype = q.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    let mut out = Vec::with_capacity(data.len());
    for src in unpermute_order(rows, heads) {
        out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
    }
    let storage = candle_core::quantized::QStorage::from_data(std::borrow::Cow::Owned(out), device, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// Undoes llama.cpp's q/k permutation: its converter maps Hugging Face rows
/// `[heads, 2, d/2]` to `[heads, d/2, 2]` so that interleaved RoPE pairs
/// become adjacent.
fn unpermute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    t.reshape((heads, rows / heads / 2, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_row_order_matches_the_dense_unpermutation() {
        let order = unpermute_order(8, 2);
        assert_eq!(order, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        let w = Tensor::arange(0f32, 8.0 * 32.0, &Device::Cpu).unwrap().reshape((8, 32)).unwrap();
        let q = QTensor::quantize(&w, candle_core::quantized::GgmlDType::Q8_0).unwrap();
        let moved = unpermute_block_rows(&q, 2, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
        let dense = unpermute_rows(&q.dequantize(&Device::Cpu).unwrap(), 2).unwrap();
        assert_eq!(moved.to_vec2::<f32>().unwrap(), dense.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // 2 heads of dim 4, one input column: HF rows 0..8.
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect();
        // llama.cpp: reshape(heads, 2, d/2).swapaxes(1, 2): head 0 -> 0,2,1,3.
        let gguf = vec![0f32, 2., 1., 3., 4., 6., 5., 7.];
        let t = Tensor::from_vec(gguf, (8, 1), &Device::Cpu).unwrap();
        let back = unpermute_rows(&t, 2).unwrap().flatten_all().unwrap();
        assert_eq!(back.to_vec1::<f32>().unwrap(), hf);
    }
}
