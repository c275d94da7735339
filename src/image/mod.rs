//! Images: references, the registry client, layer unpacking, the content-addressed store and
//! pulls.
//!
//! Owns everything under `[state] root/images` and the image records. [`Images`] is the domain
//! API the `ImageService` handlers call. Must not know CRI types (handlers convert) or
//! containers beyond the "in use" question `RemoveImage` asks.

pub mod auth_file;
pub mod durable;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::config::ImageConfig;
use crate::error::ErrorKind;
use crate::metrics::Metrics;
use reference::{Reference, ReferenceError};
use registry::{Client, Credentials, Registries, RegistryError};
use store::{ImageRecord, ImageStore};
use unpack::UnpackError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("image store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The registry served something that is not a usable image.
    #[error("invalid image: {0}")]
    BadImage(String),
    #[error("image {0:?} is in use by container {1}")]
    InUse(String, String),
    /// Past a configured limit (`[image] max_layers`): the message names it.
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Internal(String),
}

impl ImageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::Reference(e) => e.kind(),
            ImageError::Registry(e) => e.kind(),
            ImageError::Unpack(e) => e.kind(),
            ImageError::Store(e) => e.kind(),
            ImageError::BadImage(_) => ErrorKind::FailedPrecondition,
            ImageError::InUse(..) => ErrorKind::FailedPrecondition,
            ImageError::Limit(_) => ErrorKind::ResourceExhausted,
            ImageError::Io { source, .. } => ErrorKind::of_io(source),
            ImageError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// The image domain: pulls, lookups, removal, usage.
#[derive(Clone)]
pub struct Images {
    pub store: Arc<ImageStore>,
    client: Arc<Client>,
    metrics: Arc<Metrics>,
    downloads: Arc<tokio::sync::Semaphore>,
    default_registry: String,
    pinned: Arc<Vec<Reference>>,
    limits: PullLimits,
}

/// `[image] max_layer_size`, `max_image_size` (0 = unlimited) and `max_layers`.
#[derive(Debug, Clone, Copy)]
pub struct PullLimits {
    pub max_layer_size: u64,
    pub max_image_size: u64,
    pub max_layers: usize,
}

impl Images {
    /// Opens the store (repairing interrupted work) and the registry client. Blocking.
    pub fn open(
        state_root: &std::path::Path,
        config: &ImageConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Images, ImageError> {
        let (store, recovery) = ImageStore::open(state_root)?;
        tracing::info!(
            images = store.images.list().len(),
            layers = store.layers.list().len(),
            ?recovery,
            "image store opened"
        );
        let client = Client::new(Registries::from(config))?;
        let pinned = config
            .pinned_images
            .iter()
            .filter_map(|p| match Reference::parse(p, &config.default_registry) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(image = %p, error = %e, "ignoring pinned image");
                    None
                }
            })
            .collect();
        Ok(Images {
            store: Arc::new(store),
            client: Arc::new(client),
            metrics,
            downloads: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_downloads)),
            default_registry: config.default_registry.clone(),
            pinned: Arc::new(pinned),
            limits: PullLimits {
                max_layer_size: config.max_layer_size,
                max_image_size: config.max_image_size,
                max_layers: config.max_layers,
            },
        })
    }

    /// New registry settings (SIGHUP).
    pub fn reload(&self, config: &ImageConfig) {
        self.client.set_registries(Registries::from(config));
    }

    pub fn parse(&self, image: &str) -> Result<Reference, ImageError> {
        Ok(Reference::parse(image, &self.default_registry)?)
    }

    /// Pulls with metrics: `crius_image_pulls_total{result}` and the duration histogram.
    pub async fn pull_image(
        &self,
        image: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Arc<ImageRecord>, ImageError> {
        let started = Instant::now();
        let result = match self.parse(image) {
            Ok(reference) => self.pull(&reference, credentials).await,
            Err(e) => Err(e),
        };
        let label = match &result {
            Ok(_) => "success".to_string(),
            // ErrorKind names are the gRPC code names.
            Err(e) => format!("{:?}", e.kind()),
        };
        self.metrics
            .image_pulls_total
            .with_label_values(&[label.as_str()])
            .inc();
        self.metrics
            .image_pull_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    pub fn lookup(&self, query: &str) -> Option<Arc<ImageRecord>> {
        self.store.lookup(query, &self.default_registry)
    }

    pub fn list(&self) -> Vec<Arc<ImageRecord>> {
        self.store
            .images
            .list()
            .into_iter()
            .map(|(_, i)| i)
            .collect()
    }

    /// Removes the image `query` names (all its tags); unknown images are fine. Answers once the
    /// records are gone; the files follow in the background (see [`store`]).
    pub async fn remove(&self, query: &str) -> Result<Option<String>, ImageError> {
        let _gc = self.store.gc.write().await;
        let _records = self.store.records.lock().await;
        let Some(image) = self.lookup(query) else {
            return Ok(None);
        };
        let store = self.store.clone();
        let id = image.id.clone();
        let started = Instant::now();
        let removed = crate::telemetry::spawn_blocking(move || store.remove_image(&id))
            .await
            .map_err(|e| ImageError::Internal(format!("remove task: {e}")));
        // Whatever reached the trash goes, even after a later step failed.
        self.store.purge_trash_in_background();
        let freed = removed??;
        tracing::info!(
            image_id = %image.id,
            layers_freed = freed,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "image removed"
        );
        Ok(Some(image.id.clone()))
    }

    /// (bytes, inodes) used by the image store.
    pub async fn usage(&self) -> Result<(u64, u64), ImageError> {
        let store = self.store.clone();
        crate::telemetry::spawn_blocking(move || store.usage())
            .await
            .map_err(|e| ImageError::Internal(format!("usage task: {e}")))
    }

    /// Whether a configured pinned image names this image.
    pub fn is_pinned(&self, image: &ImageRecord) -> bool {
        self.pinned.iter().any(|p| match (&p.digest, p.tagged()) {
            (Some(d), _) => image.repo_digests.contains(&p.digested(d)),
            (None, Some(tag)) => image.repo_tags.contains(&tag),
            (None, None) => false,
        })
    }
}

/// The image config's `User` as CRI reports it: a numeric uid, or a user name.
pub fn image_user(image: &ImageRecord) -> (Option<i64>, String) {
    let user = image.config["config"]["User"].as_str().unwrap_or("");
    let name = user.split(':').next().unwrap_or("");
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) if name.is_empty() => (None, String::new()),
        Err(_) => (None, name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image_with_config(config: serde_json::Value) -> ImageRecord {
        ImageRecord {
            id: "sha256:0".into(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifest_digest: String::new(),
            manifest_media_type: String::new(),
            config,
            layers: Vec::new(),
            size: 0,
            pulled_at_ns: 0,
        }
    }

    #[test]
    fn image_user_is_a_uid_or_a_name_from_the_config_user() {
        let cases: &[(&str, Option<i64>, &str)] = &[
            ("1000", Some(1000), ""),
            ("1000:1000", Some(1000), ""),
            ("0", Some(0), ""),
            ("1000:nogroup", Some(1000), ""),
            ("nobody", None, "nobody"),
            ("nobody:nogroup", None, "nobody"),
            ("nobody:1000", None, "nobody"),
            ("", None, ""),
            (":1000", None, ""),
        ];
        for (user, uid, name) in cases {
            let image = image_with_config(json!({"config": {"User": user}}));
            assert_eq!(
                image_user(&image),
                (*uid, name.to_string()),
                "User {user:?}"
            );
        }
    }

    #[test]
    fn image_user_without_a_user_is_unset() {
        for config in [
            json!({"config": {"Env": ["A=1"]}}),
            json!({"architecture": "amd64"}),
            json!({"config": {"User": 1000}}),
            json!(null),
        ] {
            assert_eq!(
                image_user(&image_with_config(config.clone())),
                (None, String::new()),
                "{config}"
            );
        }
    }
}
