//! Whether a model's weights fit in this machine's memory, checked before
//! they are read. A model too big for RAM is otherwise killed by the
//! kernel part-way through loading, with no message, and takes the
//! server's in-process worker (and so the server) with it.

use std::path::Path;

use crate::error::{Error, Result};
use crate::load::WeightMode;
use crate::model::Config;

const GIB: f64 = (1u64 << 30) as f64;

/// Parameters of the decoder's weights for `cfg`: projections, norms,
/// embeddings and an untied lm_head (biases are too few to count).
pub fn parameters(cfg: &Config) -> u64 {
    let (h, d) = (cfg.hidden_size as u64, cfg.head_dim as u64);
    let (heads, kv) = (cfg.num_attention_heads as u64, cfg.num_key_value_heads as u64);
    let per_layer = h * (heads + 2 * kv) * d + heads * d * h + 3 * h * cfg.intermediate_size as u64 + 2 * h;
    let lm_head = if cfg.tie_word_embeddings { 0 } else { cfg.vocab_size as u64 * h };
    cfg.num_hidden_layers as u64 * per_layer + cfg.vocab_size as u64 * h + lm_head + h
}

/// The fewest bytes the weights of `cfg` take in memory as `mode` keeps
/// them: 4 per parameter in f32, 2 in bf16, and at least half a byte
/// quantized (4-bit blocks). The check only refuses what cannot fit.
pub fn weight_bytes(cfg: &Config, mode: WeightMode) -> u64 {
    let p = parameters(cfg);
    match mode {
        WeightMode::F32 => 4 * p,
        WeightMode::Bf16 => 2 * p,
        WeightMode::Quantized => p / 2,
    }
}

/// Refuses weights of `needed` bytes when this process has less memory
/// left (see [`available_bytes`]); passes where that cannot be read.
pub(crate) fn check_fits(needed: u64, mode: WeightMode) -> Result<()> {
    match available_bytes() {
        Some(available) => check_fits_in(needed, available, mode),
        None => Ok(()),
    }
}

fn check_fits_in(needed: u64, available: u64, mode: WeightMode) -> Result<()> {
    if needed <= available {
        return Ok(());
    }
    let hint = match mode {
        WeightMode::F32 => "; quantized weights take about a quarter of that, or run it on a GPU",
        WeightMode::Bf16 => "; quantized weights take about half of that, or run it on a GPU",
        WeightMode::Quantized => "; run it on a GPU or a machine with more memory",
    };
    Err(Error::InsufficientMemory(format!(
        "the model's {} weights need at least {:.1} GiB, but only {:.1} GiB of memory is available{hint}",
        match mode {
            WeightMode::F32 => "f32",
            WeightMode::Bf16 => "bf16",
            WeightMode::Quantized => "quantized",
        },
        needed as f64 / GIB,
        available as f64 / GIB,
    )))
}

/// Bytes this process can still allocate: the kernel's available memory
/// plus free swap, or less where a cgroup (a container's or a service's
/// memory limit) leaves less room. None where neither can be read (not
/// Linux).
pub fn available_bytes() -> Option<u64> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let system = read(Path::new("/proc/meminfo")).and_then(|s| meminfo_available(&s));
    let cgroup = read(Path::new("/proc/self/cgroup")).and_then(|s| cgroup_room_of(&s, read));
    match (system, cgroup) {
        (Some(s), Some(c)) => Some(s.min(c)),
        (s, c) => s.or(c),
    }
}

/// The least room left under the memory limits of the cgroups listed in
/// `/proc/self/cgroup` (`self_cgroup`) and their ancestors, where a limit
/// may also sit: cgroup v2 (`0::/path`, mounted at /sys/fs/cgroup, or
/// /sys/fs/cgroup/unified beside v1) and v1's memory controller.
fn cgroup_room_of(self_cgroup: &str, read: impl Fn(&Path) -> Option<String>) -> Option<u64> {
    let mut least: Option<u64> = None;
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (roots, limit, usage): (&[&str], _, _) = if controllers.is_empty() {
            (&["/sys/fs/cgroup", "/sys/fs/cgroup/unified"], "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (&["/sys/fs/cgroup/memory"], "memory.limit_in_bytes", "memory.usage_in_bytes")
        } else {
            continue;
        };
        for root in roots {
            let mut dir = Path::new(root).join(path.trim_start_matches('/'));
            loop {
                if let Some(room) = cgroup_room(read(&dir.join(limit)).as_deref(), read(&dir.join(usage)).as_deref()) {
                    least = Some(least.map_or(room, |l| l.min(room)));
                }
                if dir == Path::new(root) || !dir.pop() {
                    break;
                }
            }
        }
    }
    least
}

/// `MemAvailable + SwapFree` of `/proc/meminfo`, in bytes.
fn meminfo_available(meminfo: &str) -> Option<u64> {
    let kib = |key: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    Some((kib("MemAvailable")? + kib("SwapFree").unwrap_or(0)) * 1024)
}

/// Room under a cgroup's memory limit: `limit − usage`, None without a
/// limit ("max", or v1's page-rounded i64::MAX).
fn cgroup_room(limit: Option<&str>, usage: Option<&str>) -> Option<u64> {
    let limit: u64 = limit?.trim().parse().ok()?;
    if limit >= 1 << 60 {
        return None;
    }
    let usage: u64 = usage?.trim().parse().ok()?;
    Some(limit.saturating_sub(usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo_and_cgroup_limits() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   2000000 kB\nSwapTotal: 0 kB\nSwapFree:        500 kB\n";
        assert_eq!(meminfo_available(meminfo), Some((2_000_000 + 500) * 1024));
        assert_eq!(meminfo_available("MemTotal: 5 kB\n"), None);
        assert_eq!(cgroup_room(Some("max\n"), Some("100\n")), None);
        assert_eq!(cgroup_room(Some("9223372036854771712\n"), Some("100\n")), None);
        assert_eq!(cgroup_room(Some("1000\n"), Some("400\n")), Some(600));
        assert_eq!(cgroup_room(Some("1000\n"), Some("4000\n")), Some(0));
        assert_eq!(cgroup_room(None, Some("1")), None);

        // A service's limit two levels up, v1 and v2 side by side.
        let files: std::collections::HashMap<&str, &str> = [
            ("/sys/fs/cgroup/unified/system.slice/memory.max", "8000\n"),
            ("/sys/fs/cgroup/unified/system.slice/memory.current", "3000\n"),
            ("/sys/fs/cgroup/unified/system.slice/rlt.service/memory.max", "max\n"),
            ("/sys/fs/cgroup/unified/system.slice/rlt.service/memory.current", "1000\n"),
            ("/sys/fs/cgroup/memory/box/memory.limit_in_bytes", "6000\n"),
            ("/sys/fs/cgroup/memory/box/memory.usage_in_bytes", "2000\n"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "5000\n"),
        ]
        .into_iter()
        .collect();
        let read = |p: &Path| files.get(p.to_str().unwrap()).map(|s| s.to_string());
        assert_eq!(cgroup_room_of("0::/system.slice/rlt.service\n", read), Some(5000));
        assert_eq!(cgroup_room_of("4:memory:/box\n0::/system.slice/rlt.service\n", read), Some(4000));
        assert_eq!(cgroup_room_of("4:memory:/\n1:cpu:/box\n", read), None);
        // This machine: something sensible.
        if cfg!(target_os = "linux") {
            assert!(available_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn refuses_weights_larger_than_memory_by_name() {
        // Qwen2.5-7B's shape: 7.6 billion parameters.
        let cfg = Config::from_hf_json(
            r#"{"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064}"#,
        )
        .unwrap();
        let p = parameters(&cfg);
        assert!((7_600_000_000..7_700_000_000).contains(&p), "{p}");
        let available = 24 << 30;
        let e = check_fits_in(weight_bytes(&cfg, WeightMode::F32), available, WeightMode::F32).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("f32 weights need at least 28.") && msg.contains("24.0 GiB"), "{msg}");
        assert!(msg.contains("quantized weights"), "{msg}");
        check_fits_in(weight_bytes(&cfg, WeightMode::Quantized), available, WeightMode::Quantized).unwrap();
    }
}
