//! `ImageStatus`: an unknown image is an empty response, not an error.

use std::collections::HashMap;

use k8s_cri::v1::{ImageStatusRequest, ImageStatusResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn image_status(daemon: &Daemon, req: ImageStatusRequest) -> Result<ImageStatusResponse> {
    let query = req.image.map(|i| i.image).unwrap_or_default();
    if query.is_empty() {
        return Err(Error::InvalidArgument("image is empty".into()));
    }
    let images = daemon.images()?;
    let Some(record) = images.lookup(&query) else {
        return Ok(ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if req.verbose {
        let layers: Vec<_> = record
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "digest": l.digest, "diffID": l.diff_id, "chainID": l.chain_id,
                    "mediaType": l.media_type, "size": l.size,
                    "dir": images.store.layer_dir(&l.chain_id),
                })
            })
            .collect();
        let verbose = serde_json::json!({
            "id": record.id,
            "manifestDigest": record.manifest_digest,
            "manifestMediaType": record.manifest_media_type,
            "size": record.size,
            "pulledAt": record.pulled_at_ns,
            "layers": layers,
            "config": record.config,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(ImageStatusResponse {
        image: Some(super::to_cri(images, &record)),
        info,
    })
}
