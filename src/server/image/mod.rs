//! Handlers of `ImageService`, one file per RPC, and the record → CRI conversion they share.

pub mod image_fs_info;
pub mod image_status;
pub mod list_images;
pub mod pull_image;
pub mod remove_image;

use k8s_cri::v1 as cri;

use crate::image::store::ImageRecord;
use crate::image::{image_user, Images};

/// An image record as CRI reports it.
pub fn to_cri(images: &Images, record: &ImageRecord) -> cri::Image {
    let (uid, username) = image_user(record);
    cri::Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        pinned: images.is_pinned(record),
    }
}
