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

use crate::app::Daemon;
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
        // The container's image and its image volumes' images, in one order (no lock cycles).
        let images = self.images()?;
        let mut image_ids: Vec<String> = req
            .config
            .iter()
            .flat_map(|c| {
                c.image
                    .iter()
                    .chain(c.mounts.iter().filter_map(|m| m.image.as_ref()))
            })
            .filter_map(|i| images.lookup(&i.image).map(|r| r.id.clone()))
            .collect();
        image_ids.sort();
        image_ids.dedup();
        let locks = self.locks.clone();
        tokio::spawn(async move {
            let _pod = locks.pods.read(&pod.id).await;
            let mut held_images = Vec::with_capacity(image_ids.len());
            for id in &image_ids {
                held_images.push(locks.images.read(id).await);
            }
            // The pod's readiness and the image are checked again inside, under the locks.
            containers.create(req).await
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
        tokio::spawn(async move {
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
        tokio::spawn(async move {
            let _pod = locks.pods.write(&pod.id).await;
            containers.remove_pod(&pod.id).await?;
            sandboxes.remove(&pod.id).await?;
            containers.forget_pod_samples(&pod.id);
            Ok(())
        })
        .await
        .map_err(join_err)?
    }

    /// RemoveImage, refused while a container uses the image or is being created from it.
    pub async fn remove_image(&self, query: &str) -> Result<()> {
        let images = self.images()?.clone();
        let containers = self.containers()?.clone();
        let Some(image) = images.lookup(query) else {
            images.remove(query).await?;
            return Ok(());
        };
        let locks = self.locks.clone();
        let query = query.to_string();
        tokio::spawn(async move {
            let _image = locks.images.write(&image.id).await;
            if let Some(container) = containers.image_in_use(&image.id) {
                return Err(crate::image::ImageError::InUse(query, container).into());
            }
            images.remove(&query).await?;
            Ok(())
        })
        .await
        .map_err(join_err)?
    }
}
