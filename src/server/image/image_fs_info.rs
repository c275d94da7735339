//! `ImageFsInfo`: bytes and inodes used by the image store.

use k8s_cri::v1::{
    FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse, UInt64Value,
};

use crate::daemon::Daemon;
use crate::error::Result;

pub async fn image_fs_info(
    daemon: &Daemon,
    _req: ImageFsInfoRequest,
) -> Result<ImageFsInfoResponse> {
    let images = daemon.images()?;
    let (bytes, inodes) = images.usage().await?;
    let timestamp = crate::util::now_ns();
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: images.store.dir().display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: bytes }),
            inodes_used: Some(UInt64Value { value: inodes }),
        }],
        container_filesystems: Vec::new(),
    })
}
