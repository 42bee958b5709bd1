//! Choosing the device the models run on.
//!
//! CPU is the default. On CPU, candle runs its kernels on one thread per
//! physical core unless `RAYON_NUM_THREADS` (or `CANDLE_NUM_THREADS` for
//! its quantized kernels) says otherwise.

use candle_core::Device;

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda`, `cuda:N` or `metal`. A GPU name in a build
/// without the matching cargo feature is an error, not a silent CPU
/// fallback.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    // Without the feature, candle's own message speaks of "the candle
    // crate"; say what to rebuild instead.
    let gpu = |open: fn(usize) -> candle_core::Result<Device>, ordinal: usize, what: &str, built: bool| {
        if !built {
            let (kind, feature) = if what == "metal" { ("Metal", "metal") } else { ("CUDA", "cuda") };
            return Err(Error::Device(format!(
                "`{what}`: this build of rlt has no {kind} support; rebuild it with `--features {feature}`"
            )));
        }
        open(ordinal)
            .map_err(|e| Error::Device(format!("`{what}` is not available: {}", crate::error::candle_reason(&e))))
    };
    match name.as_str() {
        "" | "cpu" => Ok(Device::Cpu),
        "metal" => gpu(Device::new_metal, 0, "metal", cfg!(feature = "metal")),
        "cuda" => gpu(Device::new_cuda, 0, "cuda", cfg!(feature = "cuda")),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => gpu(Device::new_cuda, i, other, cfg!(feature = "cuda")),
            _ => Err(Error::Device(format!("unknown device `{other}` (use cpu, cuda, cuda:N or metal)"))),
        },
    }
}

/// Threads the engine's CPU kernels run on: rayon's pool (one per logical
/// CPU by default), which honours `RAYON_NUM_THREADS` and the process's
/// CPU affinity (`taskset`, cgroup cpusets). candle's own count is the
/// machine's physical cores whatever the affinity, which overstates it on
/// a pinned process.
pub fn cpu_threads() -> usize {
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_unknown() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(matches!(parse_device("tpu"), Err(Error::Device(_))));
        #[cfg(not(feature = "cuda"))]
        {
            let e = parse_device("cuda:0").unwrap_err();
            assert!(matches!(e, Error::Device(_)));
            assert!(e.to_string().contains("no CUDA support; rebuild it with `--features cuda`"), "{e}");
        }
    }
}
