//! Operations that span domains — a pod with its containers, an image with the containers
//! made from it — each under its object's lock, so that no two of them interleave wrongly:
//!
//! - CreateContainer holds its pod's lock (shared: creates in one pod run side by side) and the
//!   locks (shared, taken in id order) of its image and of its image volumes' images from the
//!   readiness and existence checks until the record is written;
//! - StopPodSandbox and RemovePodSandbox hold the pod's lock (exclusive) across the containers'
//!   stop/remove and the pod's own, so no container is created into a pod being stopped;
//! - RemoveImage holds the image's lock (exclusive) across its in-use check and the removal, so
//!   an image cannot be removed (and its layers collected) under a container being created.
//!
//! Each runs in its own task: a client that gives up does not cut an operation in half (its
//! retry waits on the lock and finds the result). Must not hold a domain's internals: it calls
//! the domains' APIs only.

use k8s_cri::v1 as cri;

use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::keyed::KeyedRwLocks;

/// The locks of the cross-domain operations.
#[derive(Debug, Default)]
pub struct Locks {
    pods: KeyedRwLocks,
    images: KeyedRwLocks,
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("operation task failed: {e}"))
}

impl Daemon {
    /// CreateContainer in a pod that stays ready, from an image that stays present, until the
    /// container's record exists.
    pub async fn create_container(&self, req: cri::CreateContainerRequest) -> Result<String> {
        let containers = self.containers()?.clone();
        let pod = self.sandboxes()?.resolve(&req.pod_sandbox_id)?;
        let images = self.images()?.clone();
        // The container's image and its image volumes' images (with the mount's path), as
        // named; an empty name is the create's own validation error.
        let names: Vec<(String, Option<String>)> =
            req.config
                .iter()
                .flat_map(|c| {
                    c.image.iter().map(|i| (i.image.clone(), None)).chain(
                        c.mounts.iter().filter_map(|m| {
                            m.image
                                .as_ref()
                                .map(|i| (i.image.clone(), Some(m.container_path.clone())))
                        }),
                    )
                })
                .filter(|(name, _)| !name.is_empty())
                .collect();
        // What each name resolves to now, in order (`None`: no such image).
        let resolve = {
            let names = names.clone();
            move || -> Vec<Option<String>> {
                names
                    .iter()
                    .map(|(n, _)| images.lookup(n).map(|r| r.id.clone()))
                    .collect()
            }
        };
        let locks = self.locks.clone();
        crate::telemetry::spawn(async move {
            let _pod = locks.pods.read(&pod.id).await;
            // Lock the images the names resolve to (in one order: no lock cycles), then check
            // that they still resolve to exactly those: an image pulled or re-tagged between the
            // lookup and the lock would otherwise be used unlocked, and could be removed (its
            // layers collected) under the create.
            let mut attempt = 0;
            let (_held, pins) = loop {
                let resolved = resolve();
                let mut ids: Vec<&String> = resolved.iter().flatten().collect();
                ids.sort();
                ids.dedup();
                let mut held = Vec::with_capacity(ids.len());
                for id in ids {
                    held.push(locks.images.read(id).await);
                }
                if resolve() == resolved {
                    // A name that resolves to nothing is NotFound here: were the create to look
                    // it up again, an image pulled meanwhile would be used without its lock.
                    if let Some(((name, mount), _)) =
                        names.iter().zip(&resolved).find(|(_, id)| id.is_none())
                    {
                        return Err(Error::NotFound(match mount {
                            None => format!("image {} not found", crate::util::quote(name)),
                            Some(path) => format!("mount {path}: image {name:?} not found"),
                        }));
                    }
                    let pins: crate::container::ImagePins = names
                        .iter()
                        .zip(resolved)
                        .filter_map(|((name, _), id)| Some((name.clone(), id?)))
                        .collect();
                    break (held, pins);
                }
                attempt += 1;
                if attempt >= 5 {
                    return Err(Error::FailedPrecondition(
                        "the container's images keep changing (pulled or removed meanwhile); retry"
                            .into(),
                    ));
                }
            };
            // The pod's readiness is checked again inside, under its lock; the images are the
            // locked ones, whatever their names resolve to by then.
            containers.create(req, pins).await
        })
        .await
        .map_err(join_err)?
    }

    /// StopPodSandbox: the pod's containers, then the pod.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let containers = self.containers()?.clone();
        let sandboxes = self.sandboxes()?.clone();
        let Ok(pod) = sandboxes.resolve(id) else {
            // Unknown pods stop fine (the CRI contract); ambiguous prefixes say so.
            return sandboxes.stop(id).await;
        };
        let locks = self.locks.clone();
        crate::telemetry::spawn(async move {
            let _pod = locks.pods.write(&pod.id).await;
            containers.stop_pod(&pod.id).await?;
            sandboxes.stop(&pod.id).await
        })
        .await
        .map_err(join_err)?
    }

    /// RemovePodSandbox: the pod's containers, then the pod.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let containers = self.containers()?.clone();
        let sandboxes = self.sandboxes()?.clone();
        let Ok(pod) = sandboxes.resolve(id) else {
            return sandboxes.remove(id).await;
        };
        let locks = self.locks.clone();
        crate::telemetry::spawn(async move {
            let _pod = locks.pods.write(&pod.id).await;
            containers.remove_pod(&pod.id).await?;
            sandboxes.remove(&pod.id).await?;
            containers.forget_pod_samples(&pod.id);
            Ok(())
        })
        .await
        .map_err(join_err)?
    }

    /// Waits for removed containers' teardowns (a graceful shutdown lets them finish).
    pub async fn settle(&self) {
        if let Ok(containers) = self.containers() {
            if let Err(e) = containers.wait_teardowns(|_| true).await {
                tracing::warn!(error = %e, "a container teardown failed again; the next start retries it");
            }
        }
    }

    /// RemoveImage, refused while a container uses the image or is being created from it.
    pub async fn remove_image(&self, query: &str) -> Result<()> {
        let images = self.images()?.clone();
        let containers = self.containers()?.clone();
        let Some(image) = images.lookup(query) else {
            // Nothing to remove. Not `images.remove(query)`: an image pulled meanwhile would be
            // removed without its lock or the in-use check (the stress test caught it taking
            // the layers from under containers being created).
            return Ok(());
        };
        let locks = self.locks.clone();
        let query = query.to_string();
        crate::telemetry::spawn(async move {
            let _image = locks.images.write(&image.id).await;
            if let Some(container) = containers.image_in_use(&image.id) {
                return Err(crate::image::ImageError::InUse(query, container).into());
            }
            // Removed containers' rootfs mounts of its layers are gone first.
            containers
                .wait_teardowns(|r| r.uses_image(&image.id))
                .await?;
            // By the id locked above: the name may point at another image by now.
            images.remove(&image.id).await?;
            Ok(())
        })
        .await
        .map_err(join_err)?
    }
}
