//! One pull: resolve → config → layers (download ⇢ verify ⇢ decompress ⇢ untar, streamed) →
//! records.
//!
//! Each layer is processed once per chain ID across all concurrent pulls (per-key lock, then a
//! re-check), and each blob downloaded once (a per-digest lock inside it, then a look in
//! `blobs/`), with at most `max_concurrent_downloads` layers in flight. Layer content lands in
//! `tmp/` and is renamed into place only when complete, verified and durable; the image record is
//! written last, so a pull killed at any moment never shows up as an image.
//!
//! Durability is scoped to what the pull wrote ([`super::durable`]): each layer's files and
//! directories are fsynced (the tree's root last) after its download permit is released, so the
//! next layer downloads meanwhile; then the tree is renamed into `layers/`, that directory
//! fsynced, and only then the layer record written. Blobs are fsynced before their rename. The
//! filesystem as a whole is never flushed: a pull does not pay for other writers.

use crate::util::now_ns;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::io::SyncIoBridge;
use tracing::Instrument;

use super::durable;
use super::registry::{Credentials, Descriptor, Platform, Resolved};
use super::store::{chain_id, hex_of, remove_path, ImageLayer, ImageRecord, LayerRecord};
use super::unpack::{unpack_layer_limited, Compression, Exceeded, Limits, UnpackError, Unpacked};
use super::{ImageError, Images};
use crate::image::reference::Reference;

/// Largest image config accepted.
const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Copies every byte read into `sink`: the verified blob lands on disk as it streams.
struct Tee<R, W> {
    inner: R,
    sink: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Removes its paths when dropped unless disarmed: partial files never outlive a failed step.
struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    /// The paths now belong to the store: keep them.
    fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = remove_path(p);
        }
    }
}

fn blocking_err(e: tokio::task::JoinError) -> ImageError {
    ImageError::Internal(format!("blocking task failed: {e}"))
}

impl Images {
    /// Pulls `reference` and returns the image record.
    pub async fn pull(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
    ) -> Result<Arc<ImageRecord>, ImageError> {
        let mut unpacked = Vec::new();
        let result = self
            .pull_layers(reference, credentials, &mut unpacked)
            .await;
        let exhausted =
            matches!(&result, Err(e) if e.kind() == crate::error::ErrorKind::ResourceExhausted);
        if exhausted && !unpacked.is_empty() {
            // A pull refused for a size limit (or a full disk) would be refused again: it leaves
            // no layer nobody uses. Other failures (network, a tampered blob) keep the verified
            // layers for the retry.
            let _gc = self.store.gc.write().await;
            let _records = self.store.records.lock().await;
            let store = self.store.clone();
            let removed =
                crate::telemetry::spawn_blocking(move || store.remove_unused_layers(&unpacked))
                    .await;
            self.store.purge_trash_in_background();
            match removed {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!(layers = n, "removed the layers of a failed pull"),
                Ok(Err(e)) => tracing::warn!(error = %e, "removing the layers of a failed pull"),
                Err(e) => tracing::warn!(error = %e, "removing the layers of a failed pull"),
            }
        }
        result
    }

    /// The pull; `unpacked` collects the chain IDs of the layers it unpacked (not reused).
    async fn pull_layers(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        unpacked: &mut Vec<String>,
    ) -> Result<Arc<ImageRecord>, ImageError> {
        let _gc = self.store.gc.read().await;
        let resolved = self
            .client
            .resolve(reference, credentials, &Platform::host())
            .await?;
        tracing::debug!(endpoint = %resolved.endpoint, manifest = %resolved.manifest_digest, "resolved");

        let config_bytes = self.config_blob(&resolved).await?;
        let config: serde_json::Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| ImageError::BadImage(format!("config {}: {e}", resolved.config.digest)))?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if resolved.layers.len() > self.limits.max_layers {
            return Err(ImageError::Limit(format!(
                "{reference}: {} layers are more than [image] max_layers {}",
                resolved.layers.len(),
                self.limits.max_layers
            )));
        }
        if diff_ids.len() != resolved.layers.len() {
            return Err(ImageError::BadImage(format!(
                "{reference}: manifest has {} layers but config lists {} diff_ids",
                resolved.layers.len(),
                diff_ids.len()
            )));
        }

        let mut layers = Vec::with_capacity(diff_ids.len());
        let mut parent: Option<String> = None;
        for (desc, diff_id) in resolved.layers.iter().zip(&diff_ids) {
            let chain = chain_id(parent.as_deref(), diff_id);
            layers.push((desc.clone(), diff_id.clone(), chain.clone(), parent.clone()));
            parent = Some(chain);
        }
        let resolved = Arc::new(resolved);
        let limits = Limits {
            layer: match (self.limits.max_layer_size, self.limits.max_image_size) {
                (0, image) | (image, 0) => image,
                (layer, image) => layer.min(image),
            },
            image: Some((
                self.limits.max_image_size,
                Arc::new(std::sync::atomic::AtomicU64::new(0)),
            )),
        };
        // A pull whose caller goes away (a cancelled PullImage) aborts its layer tasks at their
        // next await instead of letting them download on: each one's cleanup guard removes
        // what it had half written, and a concurrent pull of the same layer takes over.
        let mut tasks = AbortOnDrop(Vec::new());
        tasks.0 = layers
            .iter()
            .cloned()
            .map(|(desc, diff_id, chain, parent)| {
                let images = self.clone();
                let resolved = resolved.clone();
                let limits = limits.clone();
                let span = tracing::info_span!(
                    "image.pull.layer",
                    digest = %desc.digest,
                    size = desc.size,
                    media_type = %desc.media_type,
                    reused = tracing::field::Empty,
                );
                tokio::spawn(
                    async move {
                        let r = images
                            .ensure_layer(&resolved, &desc, &diff_id, &chain, parent, &limits)
                            .await;
                        if let Ok(unpacked) = &r {
                            tracing::Span::current().record("reused", !unpacked);
                        }
                        (chain, r)
                    }
                    .instrument(span),
                )
            })
            .collect();
        // Wait for every layer (no task is left writing behind a failed pull), then report.
        let mut first_err = None;
        for t in tasks.0.iter_mut() {
            let r = match t.await.map_err(blocking_err) {
                Ok((chain, Ok(true))) => {
                    unpacked.push(chain);
                    Ok(())
                }
                Ok((_, Ok(false))) => Ok(()),
                Ok((_, Err(e))) | Err(e) => Err(e),
            };
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }

        let size = layers
            .iter()
            .filter_map(|(_, _, chain, _)| self.store.layers.get(hex_of(chain)).map(|l| l.size))
            .sum();
        let record = ImageRecord {
            id: resolved.config.digest.clone(),
            repo_tags: reference.tagged().into_iter().collect(),
            repo_digests: vec![reference.digested(&resolved.repo_digest)],
            manifest_digest: resolved.manifest_digest.clone(),
            manifest_media_type: resolved.manifest_media_type.clone(),
            config,
            layers: layers
                .into_iter()
                .map(|(desc, diff_id, chain_id, _)| ImageLayer {
                    chain_id,
                    diff_id,
                    digest: desc.digest,
                    media_type: desc.media_type,
                    size: desc.size,
                })
                .collect(),
            size,
            pulled_at_ns: now_ns(),
        };
        // Every layer is durable by now: its record was written after its files were fsynced.
        let _records = self.store.records.lock().await;
        let store = self.store.clone();
        crate::telemetry::spawn_blocking(move || store.commit_image(record))
            .await
            .map_err(blocking_err)?
    }

    /// The config blob: from the local store when present, else fetched, verified and saved.
    async fn config_blob(&self, resolved: &Resolved) -> Result<Vec<u8>, ImageError> {
        let desc = &resolved.config;
        let lock = self.store.blob_lock(&desc.digest);
        let _held = lock.lock().await;
        let path = self.store.blob_path(&desc.digest);
        if let Ok(bytes) = tokio::fs::read(&path).await {
            return Ok(bytes);
        }
        let bytes = self
            .client
            .fetch_blob_bytes(resolved, desc, MAX_CONFIG_BYTES)
            .await?;
        self.metrics
            .image_pull_bytes_total
            .inc_by(bytes.len() as u64);
        let data = bytes.clone();
        crate::telemetry::spawn_blocking(move || crate::store::write_atomic(&path, &data))
            .await
            .map_err(blocking_err)??;
        Ok(bytes)
    }

    /// Makes sure the layer `chain` is unpacked: reused, unpacked from a local verified blob,
    /// or downloaded, within `limits` (a reused layer counts toward the image's size too).
    /// Once per chain ID at a time across all pulls. `true` when this call unpacked it.
    async fn ensure_layer(
        &self,
        resolved: &Resolved,
        desc: &Descriptor,
        diff_id: &str,
        chain: &str,
        parent: Option<String>,
        limits: &Limits,
    ) -> Result<bool, ImageError> {
        // Owned: the publish below takes it into its blocking task, so a pull cancelled meanwhile
        // (its task aborted) cannot let another pull of this chain in while the files move.
        let held = self.store.key_lock(chain).lock_owned().await;
        if let Some(layer) = self.store.layers.get(hex_of(chain)) {
            self.metrics.image_layers_reused_total.inc();
            if let Some((max, used)) = &limits.image {
                let total =
                    used.fetch_add(layer.size, std::sync::atomic::Ordering::Relaxed) + layer.size;
                if *max != 0 && total > *max {
                    return Err(UnpackError::TooLarge(Exceeded::Image(*max)).into());
                }
            }
            return Ok(false);
        }
        let compression = Compression::from_media_type(&desc.media_type).ok_or_else(|| {
            ImageError::BadImage(format!(
                "layer {}: unsupported media type {:?}",
                desc.digest, desc.media_type
            ))
        })?;
        // One blob can sit at another position, so under another chain ID, in another image:
        // one download per blob too. Whoever waits here then unpacks the blob from `blobs/`.
        let blob_lock = self.store.blob_lock(&desc.digest);
        let _blob_held = blob_lock.lock().await;
        let permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| ImageError::Internal("download limiter closed".into()))?;

        let tmp_layer = self.store.temp_path("layer");
        let tmp_blob = self.store.temp_path("blob");
        let cleanup = Cleanup(vec![tmp_layer.clone(), tmp_blob.clone()]);
        tokio::fs::create_dir_all(&tmp_layer)
            .await
            .map_err(|source| ImageError::Io {
                path: tmp_layer.clone(),
                source,
            })?;

        let blob_path = self.store.blob_path(&desc.digest);
        let local = tokio::fs::metadata(&blob_path).await.is_ok();
        let unpacked: Unpacked = if local {
            let (path, dest) = (blob_path.clone(), tmp_layer.clone());
            let limits = limits.clone();
            crate::telemetry::spawn_blocking(move || {
                let file = std::fs::File::open(&path).map_err(|source| ImageError::Io {
                    path: path.clone(),
                    source,
                })?;
                Ok::<_, ImageError>(unpack_layer_limited(
                    std::io::BufReader::new(file),
                    compression,
                    &dest,
                    &limits,
                )?)
            })
            .await
            .map_err(blocking_err)??
        } else {
            let reader = self.client.fetch_blob(resolved, desc).await?;
            let counter = reader.counter();
            let (dest, blob) = (tmp_layer.clone(), tmp_blob.clone());
            let limits = limits.clone();
            let result = crate::telemetry::spawn_blocking(move || {
                let file = std::fs::File::create(&blob).map_err(|source| ImageError::Io {
                    path: blob.clone(),
                    source,
                })?;
                let mut sink = std::io::BufWriter::new(file);
                let tee = Tee {
                    inner: SyncIoBridge::new(reader),
                    sink: &mut sink,
                };
                let unpacked = unpack_layer_limited(tee, compression, &dest, &limits)?;
                let file = sink.into_inner().map_err(|e| ImageError::Io {
                    path: blob.clone(),
                    source: e.into_error(),
                })?;
                file.sync_all().map_err(|source| ImageError::Io {
                    path: blob.clone(),
                    source,
                })?;
                Ok::<_, ImageError>(unpacked)
            })
            .await
            .map_err(blocking_err)?;
            self.metrics.image_pull_bytes_total.inc_by(counter.get());
            let unpacked = result?;
            tokio::fs::rename(&tmp_blob, &blob_path)
                .await
                .map_err(|source| ImageError::Io {
                    path: blob_path.clone(),
                    source,
                })?;
            unpacked
        };
        if unpacked.diff_id != diff_id {
            return Err(ImageError::BadImage(format!(
                "layer {}: uncompressed digest {} does not match the config's diff_id {diff_id}",
                desc.digest, unpacked.diff_id
            )));
        }
        // The next layer may download while this one's files are flushed.
        drop(permit);
        let layer_dir = self.store.layer_dir(chain);
        let (tmp, dest) = (tmp_layer.clone(), layer_dir.clone());
        let started = std::time::Instant::now();
        let (published, _held) = crate::telemetry::spawn_blocking(move || {
            // Under this chain's key lock and without its record, whatever sits at `dest` is an
            // orphan (the publish of a pull cancelled meanwhile): make way for this one.
            let published = remove_path(&dest).and_then(|()| {
                durable::publish(&tmp, &dest).map_err(|source| ImageError::Io {
                    path: dest.clone(),
                    source,
                })
            });
            (published, held)
        })
        .await
        .map_err(blocking_err)?;
        let synced = match published {
            Ok(synced) => synced,
            Err(e) => {
                // Perhaps renamed but not made durable: no record will promise it.
                let _ = remove_path(&layer_dir);
                return Err(e);
            }
        };
        tracing::debug!(
            layer = %desc.digest,
            files = synced.files,
            dirs = synced.dirs,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "layer flushed and published"
        );
        cleanup.disarm();
        let record = LayerRecord {
            chain_id: chain.to_string(),
            diff_id: diff_id.to_string(),
            parent,
            digest: desc.digest.clone(),
            size: unpacked.size,
        };
        let put = self.store.layers.put_async(hex_of(chain), record).await;
        if let Err(e) = put {
            let _ = remove_path(&layer_dir);
            return Err(e.into());
        }
        tracing::debug!(layer = %desc.digest, chain_id = chain, entries = unpacked.entries, from_local_blob = local, "layer unpacked");
        Ok(true)
    }
}

/// Layer tasks of one pull, aborted if the pull is dropped before they finish.
struct AbortOnDrop<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
