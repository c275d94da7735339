//! `RemoveImage`: by id, tag or digest; idempotent; refused while a container uses the image;
//! frees layers nobody uses.

use k8s_cri::v1::{RemoveImageRequest, RemoveImageResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

pub async fn remove_image(daemon: &Daemon, req: RemoveImageRequest) -> Result<RemoveImageResponse> {
    let query = req.image.map(|i| i.image).unwrap_or_default();
    if query.is_empty() {
        return Err(Error::InvalidArgument("image is empty".into()));
    }
    daemon.remove_image(&query).await?;
    Ok(RemoveImageResponse {})
}
