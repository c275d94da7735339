//! `ListImages`, honouring the filter's image (id, tag or digest).

use k8s_cri::v1::{ListImagesRequest, ListImagesResponse};

use crate::daemon::Daemon;
use crate::error::Result;

pub async fn list_images(daemon: &Daemon, req: ListImagesRequest) -> Result<ListImagesResponse> {
    let images = daemon.images()?;
    let filter = req
        .filter
        .and_then(|f| f.image)
        .map(|i| i.image)
        .filter(|s| !s.is_empty());
    let records = match filter {
        Some(query) => images.lookup(&query).into_iter().collect(),
        None => images.list(),
    };
    Ok(ListImagesResponse {
        images: records.iter().map(|r| super::to_cri(images, r)).collect(),
    })
}
