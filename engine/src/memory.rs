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

/// The fewest bytes a model of `cfg` takes in memory with its weights as
/// `mode` keeps them: 4 per parameter in f32, 2 in bf16, at least half a
/// byte quantized (4-bit blocks), plus its RoPE tables (cos and sin for
/// every position of the context, in f32, held twice on CPU). The check
/// only refuses what cannot fit.
pub fn model_bytes(cfg: &Config, mode: WeightMode) -> u64 {
    let p = parameters(cfg);
    let weights = match mode {
        WeightMode::F32 => 4 * p,
        WeightMode::Bf16 => 2 * p,
        WeightMode::Quantized => p / 2,
    };
    let rope = cfg.max_position_embeddings as u64 * cfg.head_dim as u64 * 4 * 2;
    weights + rope
}

/// Memory this process can still use, and where that figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Available {
    pub bytes: u64,
    /// "MemAvailable + SwapFree", or the cgroup whose limit binds.
    pub from: String,
}

/// Refuses a model of `needed` bytes when this process has less memory
/// left (see [`available`]); passes where that cannot be read.
pub(crate) fn check_fits(needed: u64, mode: WeightMode) -> Result<()> {
    match available() {
        Some(room) => check_fits_in(needed, &room, mode),
        None => Ok(()),
    }
}

fn check_fits_in(needed: u64, room: &Available, mode: WeightMode) -> Result<()> {
    if needed <= room.bytes {
        return Ok(());
    }
    let (kind, hint) = match mode {
        WeightMode::F32 => ("f32", "; quantized weights (decoding only) take about a quarter, or run it on a GPU"),
        WeightMode::Bf16 => ("bf16", "; quantized weights (decoding only) take about half, or run it on a GPU"),
        WeightMode::Quantized => ("quantized", "; run it on a GPU or a machine with more memory"),
    };
    Err(Error::InsufficientMemory(format!(
        "the model needs at least {:.1} GiB with {kind} weights, but only {:.1} GiB of memory is available ({}){hint}",
        needed as f64 / GIB,
        room.bytes as f64 / GIB,
        room.from,
    )))
}

/// Memory this process can still allocate: the kernel's available memory
/// plus free swap, or less where a cgroup (a container's or a service's
/// memory limit) leaves less room. None where neither can be read (not
/// Linux).
pub fn available() -> Option<Available> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let system = read(Path::new("/proc/meminfo"))
        .and_then(|s| meminfo_available(&s))
        .map(|bytes| Available { bytes, from: "MemAvailable + SwapFree".into() });
    let cgroup = read(Path::new("/proc/self/cgroup")).and_then(|s| cgroup_room_of(&s, read));
    match (system, cgroup) {
        (Some(s), Some(c)) => Some(if c.bytes < s.bytes { c } else { s }),
        (s, c) => s.or(c),
    }
}

/// The least room left under the memory limits of the cgroups listed in
/// `/proc/self/cgroup` (`self_cgroup`) and their ancestors, where a limit
/// may also sit: cgroup v2 (`0::/path`, mounted at /sys/fs/cgroup, or
/// /sys/fs/cgroup/unified beside v1) and v1's memory controller.
fn cgroup_room_of(self_cgroup: &str, read: impl Fn(&Path) -> Option<String>) -> Option<Available> {
    let mut least: Option<Available> = None;
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (roots, files): (&[&str], _) = if controllers.is_empty() {
            (&["/sys/fs/cgroup", "/sys/fs/cgroup/unified"], ["memory.max", "memory.current", "inactive_file"])
        } else if controllers.split(',').any(|c| c == "memory") {
            (&["/sys/fs/cgroup/memory"], ["memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"])
        } else {
            continue;
        };
        let [limit, usage, inactive] = files;
        for root in roots {
            let mut dir = Path::new(root).join(path.trim_start_matches('/'));
            loop {
                let room = cgroup_room(
                    read(&dir.join(limit)).as_deref(),
                    read(&dir.join(usage)).as_deref(),
                    read(&dir.join("memory.stat")).as_deref().and_then(|s| stat_value(s, inactive)),
                );
                if let Some(bytes) = room
                    && least.as_ref().is_none_or(|l| bytes < l.bytes)
                {
                    least = Some(Available { bytes, from: format!("the memory limit of cgroup {}", dir.display()) });
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

/// A value of a cgroup's `memory.stat` (`key value` lines).
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Room under a cgroup's memory limit, None without a limit ("max", or
/// v1's page-rounded i64::MAX). The usage counts page cache, which the
/// kernel drops when memory is needed: the inactive part of it (what
/// kubelet and `docker stats` leave out of the working set) is room too,
/// and after hashing a model's files there is a lot of it.
fn cgroup_room(limit: Option<&str>, usage: Option<&str>, inactive_file: Option<u64>) -> Option<u64> {
    let limit: u64 = limit?.trim().parse().ok()?;
    if limit >= 1 << 60 {
        return None;
    }
    let usage: u64 = usage?.trim().parse().ok()?;
    Some(limit.saturating_sub(usage.saturating_sub(inactive_file.unwrap_or(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo_and_cgroup_limits() {
        let meminfo = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   2000000 kB\nSwapTotal: 0 kB\nSwapFree:        500 kB\n";
        assert_eq!(meminfo_available(meminfo), Some((2_000_000 + 500) * 1024));
        assert_eq!(meminfo_available("MemTotal: 5 kB\n"), None);
        assert_eq!(cgroup_room(Some("max\n"), Some("100\n"), None), None);
        assert_eq!(cgroup_room(Some("9223372036854771712\n"), Some("100\n"), None), None);
        assert_eq!(cgroup_room(Some("1000\n"), Some("400\n"), None), Some(600));
        assert_eq!(cgroup_room(Some("1000\n"), Some("4000\n"), None), Some(0));
        assert_eq!(cgroup_room(None, Some("1"), None), None);
        // Page cache the kernel can drop is room.
        assert_eq!(cgroup_room(Some("1000\n"), Some("900\n"), Some(300)), Some(400));
        assert_eq!(stat_value("active_file 7\ninactive_file 300\n", "inactive_file"), Some(300));
        assert_eq!(stat_value("total_inactive_file 9\n", "inactive_file"), None);

        // A service's limit two levels up, v1 and v2 side by side.
        let files: std::collections::HashMap<&str, &str> = [
            ("/sys/fs/cgroup/unified/system.slice/memory.max", "8000\n"),
            ("/sys/fs/cgroup/unified/system.slice/memory.current", "3000\n"),
            ("/sys/fs/cgroup/unified/system.slice/rlt.service/memory.max", "max\n"),
            ("/sys/fs/cgroup/unified/system.slice/rlt.service/memory.current", "1000\n"),
            ("/sys/fs/cgroup/memory/box/memory.limit_in_bytes", "6000\n"),
            ("/sys/fs/cgroup/memory/box/memory.usage_in_bytes", "2000\n"),
            ("/sys/fs/cgroup/memory/box/memory.stat", "cache 900\ntotal_inactive_file 500\n"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "5000\n"),
        ]
        .into_iter()
        .collect();
        let read = |p: &Path| files.get(p.to_str().unwrap()).map(|s| s.to_string());
        let room = cgroup_room_of("0::/system.slice/rlt.service\n", read).unwrap();
        assert_eq!(room.bytes, 5000);
        assert!(room.from.ends_with("/sys/fs/cgroup/unified/system.slice"), "{}", room.from);
        let room = cgroup_room_of("4:memory:/box\n0::/system.slice/rlt.service\n", read).unwrap();
        assert_eq!((room.bytes, room.from.ends_with("/sys/fs/cgroup/memory/box")), (4500, true));
        assert_eq!(cgroup_room_of("4:memory:/\n1:cpu:/box\n", read), None);
        // This machine: something sensible.
        if cfg!(target_os = "linux") {
            assert!(available().is_some_and(|a| a.bytes > 0));
        }
    }

    #[test]
    fn refuses_models_larger_than_memory_by_name() {
        // Qwen2.5-7B's shape: 7.6 billion parameters.
        let cfg = Config::from_hf_json(
            r#"{"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                "max_position_embeddings": 32768}"#,
        )
        .unwrap();
        let p = parameters(&cfg);
        assert!((7_600_000_000..7_700_000_000).contains(&p), "{p}");
        // 32768 positions × 128 dimensions × 4 bytes, twice.
        assert_eq!(model_bytes(&cfg, WeightMode::F32) - 4 * p, 32 << 20);
        let room = Available { bytes: 24 << 30, from: "MemAvailable + SwapFree".into() };
        let e = check_fits_in(model_bytes(&cfg, WeightMode::F32), &room, WeightMode::F32).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("at least 28.4 GiB with f32 weights") && msg.contains("24.0 GiB"), "{msg}");
        assert!(msg.contains("(MemAvailable + SwapFree)") && msg.contains("quantized weights"), "{msg}");
        check_fits_in(model_bytes(&cfg, WeightMode::Quantized), &room, WeightMode::Quantized).unwrap();
    }
}
