//! Engine throughput on the default model: teacher-forced scoring (f32),
//! single-stream decode (Q8_0 and f32) and a group of 16 decoded together,
//! plus peak RSS. `cargo run --release -p rlt-engine --example bench`.
//!
//! Prints one JSON object per measurement so `make bench-compare` can put
//! the numbers next to PyTorch's and llama.cpp's from the same run.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rlt_engine::generate::{GenerateParams, generate};
use rlt_engine::load::{WeightMode, load_model};
use rlt_engine::logprobs::token_logprobs;

fn model_path() -> PathBuf {
    let data = std::env::var_os("RLT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data"));
    data.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The CPU's f32 peak in GFLOP/s: cores × clock × FLOPs per cycle (two
/// FMA pipes of 8 lanes with AVX2, 16 with AVX-512; Zen 4 splits AVX-512
/// into two halves, so this overstates it there).
fn f32_peak_gflops(threads: usize) -> (String, f64) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let mhz: f64 = field("cpu MHz").parse().unwrap_or(f64::NAN);
    let lanes = if field("flags").split(' ').any(|f| f == "avx512f") { 16.0 } else { 8.0 };
    (field("model name"), threads as f64 * mhz / 1e3 * 2.0 * 2.0 * lanes)
}

/// CPU seconds this process has used: on a shared machine, work per CPU
/// second is steadier than wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Deterministic pseudo-text token ids (no special tokens).
fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 20 + (i.wrapping_mul(2654435761).wrapping_add(salt) >> 7) % 40000).collect()
}

fn main() -> rlt_engine::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let path = model_path();
    let dev = Device::Cpu;
    let threads = rlt_engine::device::cpu_threads();
    let (cpu, peak) = f32_peak_gflops(threads);
    println!("{{\"threads\": {threads}, \"cpu\": {cpu:?}, \"f32_peak_gflops\": {peak:.0}}}");

    if only("score") {
        let t = Instant::now();
        let lm = load_model(&path, WeightMode::F32, &dev)?;
        println!("{{\"load_f32_s\": {:.2}}}", t.elapsed().as_secs_f64());
        let cfg = lm.model.config();
        // Multiply-adds per token in the linear layers, for GFLOP/s.
        let params_per_token = (cfg.num_hidden_layers
            * (cfg.hidden_size * (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
                + cfg.num_attention_heads * cfg.head_dim * cfg.hidden_size
                + 3 * cfg.hidden_size * cfg.intermediate_size)
            + cfg.vocab_size * cfg.hidden_size) as f64;
        let lens: Vec<usize> = match std::env::var("RLT_BENCH_LENS") {
            Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
            Err(_) => vec![512, 2048],
        };
        for len in lens {
            let seq = tokens(len, 1);
            let _ = token_logprobs(&lm.model, &[seq[..64].to_vec()], 1.0)?;
            let reps = if len == 512 { 3 } else { 1 };
            let t = Instant::now();
            for _ in 0..reps {
                token_logprobs(&lm.model, std::slice::from_ref(&seq), 1.0)?;
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            let attn = (cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * len * len * 2) as f64;
            let gflops = (2.0 * params_per_token * len as f64 + attn) / s / 1e9;
            println!(
                "{{\"score_f32_tokens\": {len}, \"seconds\": {s:.3}, \"tokens_per_s\": {:.1}, \"gflops\": {gflops:.1}}}",
                len as f64 / s
            );
        }
        println!("{{\"peak_rss_mib_after_scoring\": {:.0}}}", peak_rss_mib());
    }

    let decode = |mode: WeightMode, group: usize, new_tokens: usize| -> rlt_engine::Result<()> {
        let lm = load_model(&path, mode, &dev)?;
        let prompt = lm
            .tokenizer
            .encode("<|im_start|>user\nWrite a long story about a robot.<|im_end|>\n<|im_start|>assistant\n")?;
        let params = GenerateParams {
            n: group,
            max_new_tokens: new_tokens,
            temperature: 0.7,
            seed: 1,
            max_batch: group,
            ..Default::default()
        };
        // Warm-up (first matmuls pack weights and size scratch buffers).
        generate(
            &lm.model,
            &lm.tokenizer,
            std::slice::from_ref(&prompt),
            &GenerateParams { max_new_tokens: 4, ..params.clone() },
            |_| {},
        )?;
        let mut produced = 0usize;
        let cpu0 = cpu_seconds();
        let t = Instant::now();
        // Time decode only: prefill is measured by scoring.
        let mut first: Option<Instant> = None;
        let mut after_first = 0usize;
        generate(&lm.model, &lm.tokenizer, std::slice::from_ref(&prompt), &params, |ev| {
            produced += 1;
            if ev.generated == 1 {
                first.get_or_insert_with(Instant::now);
            } else {
                after_first += 1;
            }
        })?;
        let total = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let decode_s = first.map_or(total, |f| f.elapsed().as_secs_f64());
        println!(
            "{{\"decode\": \"{mode:?}\", \"group\": {group}, \"tokens\": {produced}, \"tokens_per_s\": {:.1}, \"total_s\": {total:.2}, \"tokens_per_cpu_s\": {:.1}}}",
            after_first as f64 / decode_s,
            produced as f64 / cpu
        );
        Ok(())
    };
    if only("decode") || only("decode-q8") {
        decode(WeightMode::Quantized, 1, 128)?;
    }
    if only("decode") || only("decode-f32") {
        decode(WeightMode::F32, 1, 128)?;
    }
    if only("group") || only("group-q8") {
        decode(WeightMode::Quantized, 16, 64)?;
    }
    if only("group") || only("group-f32") {
        decode(WeightMode::F32, 16, 64)?;
    }
    println!("{{\"peak_rss_mib\": {:.0}}}", peak_rss_mib());
    let _ = Tensor::zeros(1, candle_core::DType::F32, &dev);
    Ok(())
}
