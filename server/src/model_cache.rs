//! Loaded models, kept in memory across jobs and requests: loading
//! SmolLM2 takes about a second, a 7B model much longer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rlt_engine::load::{LoadedModel, WeightMode, load_model};

/// Models kept at once (an f32 SmolLM2 is about 0.6 GB).
const CAPACITY: usize = 3;

type Entry = ((PathBuf, WeightMode, String), Arc<LoadedModel>);

/// The process-wide cache; workers and API handlers share it.
pub fn shared() -> &'static ModelCache {
    static CACHE: OnceLock<ModelCache> = OnceLock::new();
    CACHE.get_or_init(|| ModelCache { entries: Mutex::new(Vec::new()) })
}

pub struct ModelCache {
    /// Most recently used last.
    entries: Mutex<Vec<Entry>>,
}

impl ModelCache {
    /// Loads (or reuses) a model on a device (`cpu`, `cuda`, `cuda:1`).
    /// Blocking: call it from a blocking thread.
    pub fn get(&self, path: &Path, mode: WeightMode, device: &str) -> rlt_engine::Result<Arc<LoadedModel>> {
        let key = (path.to_path_buf(), mode, device.to_owned());
        {
            let mut entries = self.entries.lock().expect("model cache lock");
            if let Some(i) = entries.iter().position(|(k, _)| *k == key) {
                let entry = entries.remove(i);
                let model = entry.1.clone();
                entries.push(entry);
                return Ok(model);
            }
        }
        // Loaded outside the lock, so a slow load does not block other models;
        // two threads may load the same model once each, harmlessly.
        let device = rlt_engine::device::parse_device(device)?;
        let model = match load_model(path, mode, &device) {
            // The cached models count as used memory: make room, once.
            Err(rlt_engine::Error::InsufficientMemory(_)) if self.evict_unused() > 0 => {
                load_model(path, mode, &device)?
            }
            other => other?,
        };
        let model = Arc::new(model);
        let mut entries = self.entries.lock().expect("model cache lock");
        if !entries.iter().any(|(k, _)| *k == key) {
            entries.push((key, model.clone()));
            if entries.len() > CAPACITY {
                entries.remove(0);
            }
        }
        Ok(model)
    }

    /// Drops the cached models no job or request holds (their memory is
    /// freed now; the others stay until their users finish); returns how
    /// many.
    fn evict_unused(&self) -> usize {
        let mut entries = self.entries.lock().expect("model cache lock");
        let before = entries.len();
        entries.retain(|(_, model)| Arc::strong_count(model) > 1);
        before - entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_keeps_models_in_use() {
        let cache = ModelCache { entries: Mutex::new(Vec::new()) };
        let data =
            std::env::var("RLT_DATA_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../data").into());
        let path = Path::new(&data).join(crate::models::DEFAULT_FILE);
        let held = cache.get(&path, WeightMode::Quantized, "cpu").unwrap();
        drop(cache.get(&path, WeightMode::F32, "cpu").unwrap());
        assert_eq!(cache.evict_unused(), 1);
        let entries = cache.entries.lock().unwrap();
        assert_eq!(entries.len(), 1);
        assert!(Arc::ptr_eq(&entries[0].1, &held));
    }
}
