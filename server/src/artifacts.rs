//! Artifacts (checkpoints, exports) in an object store: a local directory by
//! default, S3-compatible storage when `RLT_ARTIFACTS` is an `s3://` URL (and
//! the binary was built with the `s3` feature), so workers on several
//! machines share them.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

#[derive(Clone)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    /// Where it points, for logs and the UI.
    pub location: String,
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts").field("location", &self.location).finish()
    }
}

impl Artifacts {
    /// `url` is `file:///dir`, `s3://bucket/prefix` (credentials and endpoint
    /// from the usual `AWS_*` variables), or unset for `<data-dir>/artifacts`.
    pub fn open(url: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        let url = match url {
            Some(u) => url::Url::parse(u).with_context(|| format!("RLT_ARTIFACTS is not a URL: {u}"))?,
            None => {
                let dir = data_dir.join("artifacts");
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let dir = dir.canonicalize()?;
                url::Url::from_directory_path(&dir).map_err(|()| anyhow::anyhow!("bad directory {}", dir.display()))?
            }
        };
        if url.scheme() == "file" {
            let dir = url.to_file_path().map_err(|()| anyhow::anyhow!("bad file URL {url}"))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if url.scheme() == "s3" && cfg!(not(feature = "s3")) {
            anyhow::bail!("this build has no S3 support; rebuild with `--features s3` to use {url}");
        }
        let opts = std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, prefix) = object_store::parse_url_opts(&url, opts).with_context(|| format!("opening {url}"))?;
        Ok(Artifacts { store: Arc::from(store), prefix, location: url.to_string() })
    }

    fn key(&self, key: &str) -> StorePath {
        StorePath::from_iter(self.prefix.parts().chain(StorePath::from(key).parts()))
    }

    /// Stores bytes under `key` (e.g. `runs/3/checkpoints/step-32.safetensors`)
    /// and returns the key; writing the same key again replaces it.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
        self.store
            .put(&self.key(key), PutPayload::from(Bytes::from(bytes)))
            .await
            .with_context(|| format!("storing {key}"))?;
        Ok(key.to_owned())
    }

    pub async fn get(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        let result = self.store.get(&self.key(key)).await.with_context(|| format!("reading {key}"))?;
        Ok(result.bytes().await?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_round_trip_and_default_location() {
        let dir = std::env::temp_dir().join(format!("rlt-artifacts-test-{}", std::process::id()));
        let store = Artifacts::open(None, &dir).unwrap();
        assert!(store.location.starts_with("file://") && store.location.ends_with("/artifacts/"));
        store.put("runs/1/export.jsonl", b"{\"a\": 1}\n".to_vec()).await.unwrap();
        assert_eq!(store.get("runs/1/export.jsonl").await.unwrap(), b"{\"a\": 1}\n");
        assert!(dir.join("artifacts/runs/1/export.jsonl").exists(), "a plain file under the data directory");
        store.put("runs/1/export.jsonl", b"replaced".to_vec()).await.unwrap();
        assert_eq!(store.get("runs/1/export.jsonl").await.unwrap(), b"replaced");
        assert!(store.get("missing").await.is_err());
        assert!(Artifacts::open(Some("not a url"), &dir).is_err());
        if cfg!(not(feature = "s3")) {
            let err = Artifacts::open(Some("s3://bucket/prefix"), &dir).unwrap_err();
            assert!(err.to_string().contains("--features s3"), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
