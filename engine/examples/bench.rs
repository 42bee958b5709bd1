//! Engine throughput on the default model (SmolLM2-135M-Instruct, the
//! Q4_1 GGUF): teacher-forced scoring in f32 at 512 and 2048 tokens (with
//! the achieved GFLOP/s against the CPU's f32 peak), single-stream decode
//! on the GGUF's Q4_1 weights and in f32, a group of 16 completions decoded
//! together, and peak RSS.
//!
//! `cargo run --release -p rlt-engine --example bench [what…]` (`make
//! bench`), where `what` is any of `score`, `decode`, `group` or the single
//! runs `decode-q4`, `decode-f32`, `group-q4`, `group-f32`; nothing means
//! everything. `RLT_BENCH_LENS=512,2048` sets the scoring lengths;
//! `RLT_BENCH_PROMPT_WORDS=N` decodes after a prompt of about N words
//! instead of one line (a teacher's prompt holds a question and its
//! solution); `RLT_BENCH_GROUP=N` decodes groups of N instead of 16 (GRPO
//! samples 8 to 64 per question).
//!
//! Each measurement is one JSON line (`"bench": …`), which
//! `scripts/reference/bench_compare.py` (`make bench-compare`) reads to put
//! the numbers next to PyTorch's and llama.cpp's from the same run; a
//! table for people follows at the end.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use rlt_engine::generate::{GenerateParams, generate};
use rlt_engine::load::{WeightMode, load_model};
use rlt_engine::logprobs::token_logprobs;

fn model_path() -> PathBuf {
    let data = std::env::var_os("RLT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data"));
    data.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// What `/proc/cpuinfo` says of the first core: its model name, its f32
/// multiply-adds per cycle (two FMA pipes of 8 lanes with AVX2, of 16 with
/// AVX-512; Zen 4, AMD family 25, runs a 512-bit FMA as two 256-bit halves,
/// so 8 lanes there too) and its base clock in GHz.
fn cpu_info() -> (String, f64, f64) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let avx512 = field("flags").split(' ').any(|f| f == "avx512f");
    let zen4 = field("vendor_id") == "AuthenticAMD" && field("cpu family") == "25";
    let lanes = if avx512 && !zen4 { 16.0 } else { 8.0 };
    let base_ghz = field("cpu MHz").parse::<f64>().map_or(f64::NAN, |mhz| mhz / 1e3);
    (field("model name"), 2.0 * lanes, base_ghz)
}

/// The clock the cores run at while all of them are busy, in GHz, timed with
/// a chain of dependent adds (one a cycle on any x86-64 core). Virtual
/// machines report their base clock, and boost clocks run well above it, so
/// a peak at the base clock can be exceeded.
#[cfg(target_arch = "x86_64")]
fn measured_ghz(cores: usize) -> Option<f64> {
    // Adds per loop: the `.rept` count below.
    const ADDS: u64 = 100;
    const LOOPS: u64 = 100_000;
    let one_core = || {
        let mut best = f64::INFINITY;
        for _ in 0..30 {
            let t = Instant::now();
            let mut x = 0u64;
            // SAFETY: register arithmetic only; no memory is touched.
            unsafe {
                std::arch::asm!(
                    "2:", ".rept 100", "add {x}, 1", ".endr", "dec {n}", "jnz 2b",
                    x = inout(reg) x, n = inout(reg) LOOPS => _, options(nomem, nostack)
                );
            }
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(x);
        }
        (ADDS * LOOPS) as f64 / best / 1e9
    };
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..cores.max(1)).map(|_| s.spawn(one_core)).collect();
        let slowest = runs.into_iter().filter_map(|r| r.join().ok()).fold(f64::INFINITY, f64::min);
        slowest.is_finite().then_some(slowest)
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn measured_ghz(_cores: usize) -> Option<f64> {
    None
}

/// A count from the environment, if set and a number.
fn env_count(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// CPU seconds this process has used.
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

/// Deterministic pseudo-text token ids (no special tokens); the same as
/// `scripts/reference/bench_torch.py`.
fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 20 + (i.wrapping_mul(2654435761).wrapping_add(salt) >> 7) % 40000).collect()
}

const PROMPT: &str = "<|im_start|>user\nWrite a long story about a robot.<|im_end|>\n<|im_start|>assistant\n";

fn main() -> rlt_engine::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = |names: &[&str]| args.is_empty() || args.iter().any(|a| names.contains(&a.as_str()));
    let path = model_path();
    let dev = Device::Cpu;
    let threads = rlt_engine::device::cpu_threads();
    // Two hyperthreads share one core's FMA units: the peak counts cores
    // (candle's count is the physical cores, or RAYON_NUM_THREADS).
    let cores = threads.min(candle_core::utils::get_num_threads());
    let (cpu, fmas, base) = cpu_info();
    let clock = measured_ghz(cores);
    let base_peak = cores as f64 * base * 2.0 * fmas;
    // The percentage is of the peak at the measured clock, the one the
    // scoring runs at; the base clock's is printed beside it.
    let peak = clock.map_or(base_peak, |ghz| cores as f64 * ghz * 2.0 * fmas);
    // JSON has no NaN: what could not be read is null.
    let json = |x: Option<f64>, digits: usize| match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "null".to_string(),
    };
    let clock_json = json(clock, 2);
    println!(
        "{{\"bench\": \"machine\", \"threads\": {threads}, \"cpu\": {cpu:?}, \"base_ghz\": {}, \"measured_ghz\": {clock_json}, \"f32_peak_gflops\": {}, \"f32_peak_gflops_base_clock\": {}}}",
        json(Some(base), 2),
        json(Some(peak), 0),
        json(Some(base_peak), 0)
    );
    let mut table: Vec<(String, String)> = Vec::new();

    if only(&["score"]) {
        let t = Instant::now();
        let lm = load_model(&path, WeightMode::F32, &dev)?;
        println!("{{\"bench\": \"load\", \"weights\": \"f32\", \"seconds\": {:.2}}}", t.elapsed().as_secs_f64());
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
            let _ = token_logprobs(&lm.model, &[seq[..64.min(len)].to_vec()], 1.0)?;
            let reps = if len <= 512 { 3 } else { 2 };
            let mut best = f64::INFINITY;
            let mut best_cpu = f64::INFINITY;
            for _ in 0..reps {
                let (t, c) = (Instant::now(), cpu_seconds());
                token_logprobs(&lm.model, std::slice::from_ref(&seq), 1.0)?;
                best = best.min(t.elapsed().as_secs_f64());
                best_cpu = best_cpu.min(cpu_seconds() - c);
            }
            // The causal attention's two matmuls: t²/2 multiply-adds each
            // per head dimension.
            let attn = (cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * len * len * 2) as f64;
            let gflops = (2.0 * params_per_token * len as f64 + attn) / best / 1e9;
            println!(
                "{{\"bench\": \"score_f32\", \"tokens\": {len}, \"seconds\": {best:.3}, \"tokens_per_s\": {:.1}, \"gflops\": {gflops:.1}, \"pct_of_peak\": {:.0}, \"cpu_seconds\": {best_cpu:.2}}}",
                len as f64 / best,
                100.0 * gflops / peak
            );
            table.push((
                format!("teacher-forced scoring, f32, {len} tokens"),
                format!(
                    "{:.0} tok/s ({best:.2} s, {gflops:.0} GFLOP/s = {:.0}% of peak)",
                    len as f64 / best,
                    100.0 * gflops / peak
                ),
            ));
        }
        let rss = peak_rss_mib();
        println!("{{\"bench\": \"score_peak_rss\", \"mib\": {rss:.0}}}");
        table.push(("peak RSS while scoring".into(), format!("{rss:.0} MiB")));
    }

    let decode = |mode: WeightMode, group: usize, new_tokens: usize| -> rlt_engine::Result<f64> {
        let lm = load_model(&path, mode, &dev)?;
        let prompt = match env_count("RLT_BENCH_PROMPT_WORDS") {
            Some(words) => {
                let body = ["the", "robot", "counted", "17", "gears", "and", "then", "wrote", "x^2", "+", "1."]
                    .iter()
                    .cycle()
                    .take(words)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                lm.tokenizer.encode(&PROMPT.replace("Write a long story about a robot.", &body))?
            }
            None => lm.tokenizer.encode(PROMPT)?,
        };
        let params = GenerateParams {
            n: group,
            max_new_tokens: new_tokens,
            temperature: 0.7,
            seed: 1,
            max_batch: group,
            ..Default::default()
        };
        // Warm-up (page in the weights, size the scratch buffers).
        generate(
            &lm.model,
            &lm.tokenizer,
            std::slice::from_ref(&prompt),
            &GenerateParams { max_new_tokens: 4, ..params.clone() },
            |_| {},
        )?;
        let mut best: Option<(f64, usize, f64, f64)> = None;
        for _ in 0..2 {
            let mut produced = 0usize;
            let cpu0 = cpu_seconds();
            let t = Instant::now();
            // Time decoding only (from the first sampled token): the
            // prefill is what scoring measures.
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
            let rate = after_first as f64 / decode_s;
            if best.is_none_or(|b| rate > b.0) {
                best = Some((rate, produced, total, produced as f64 / cpu));
            }
        }
        let (rate, produced, total, per_cpu) = best.expect("two runs");
        let weights = match mode {
            WeightMode::Quantized => "q4_1",
            _ => "f32",
        };
        println!(
            "{{\"bench\": \"decode\", \"weights\": \"{weights}\", \"group\": {group}, \"tokens\": {produced}, \"tokens_per_s\": {rate:.1}, \"total_s\": {total:.2}, \"tokens_per_cpu_s\": {per_cpu:.1}}}"
        );
        Ok(rate)
    };
    let mut single_q4 = None;
    if only(&["decode", "decode-q4", "decode-q8"]) {
        let r = decode(WeightMode::Quantized, 1, 128)?;
        single_q4 = Some(r);
        table.push(("single-stream decode, Q4_1 GGUF".into(), format!("{r:.0} tok/s")));
    }
    if only(&["decode", "decode-f32"]) {
        let r = decode(WeightMode::F32, 1, 128)?;
        table.push(("single-stream decode, f32".into(), format!("{r:.0} tok/s")));
    }
    let group = env_count("RLT_BENCH_GROUP").unwrap_or(16).max(1);
    if only(&["group", "group-q4", "group-q8"]) {
        let r = decode(WeightMode::Quantized, group, 64)?;
        let vs = single_q4.map(|s| format!(", {:.2}x single-stream", r / s)).unwrap_or_default();
        table.push((format!("group of {group} decoded together, Q4_1, aggregate"), format!("{r:.0} tok/s{vs}")));
    }
    if only(&["group", "group-f32"]) {
        let r = decode(WeightMode::F32, group, 64)?;
        table.push((format!("group of {group} decoded together, f32, aggregate"), format!("{r:.0} tok/s")));
    }
    println!("{{\"bench\": \"peak_rss\", \"mib\": {:.0}}}", peak_rss_mib());

    if !table.is_empty() {
        println!(
            "\nSmolLM2-135M-Instruct on {cpu} ({threads} threads; f32 peak {peak:.0} GFLOP/s at the measured {clock_json} GHz, {base_peak:.0} at the base {base:.2} GHz)"
        );
        let width = table.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &table {
            println!("  {k:<width$}  {v}");
        }
    }
    Ok(())
}
