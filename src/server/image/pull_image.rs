//! `PullImage`: pulls from the registry (or its mirrors) and returns the image id.

use k8s_cri::v1::{AuthConfig, PullImageRequest, PullImageResponse};

use crate::daemon::Daemon;
use crate::error::{Error, Result};
use crate::image::registry::Credentials;

fn credentials(auth: AuthConfig) -> Option<Credentials> {
    let c = Credentials {
        username: auth.username,
        password: auth.password,
        auth: auth.auth,
        identity_token: auth.identity_token,
        registry_token: auth.registry_token,
    };
    let empty = c.username.is_empty()
        && c.password.is_empty()
        && c.auth.is_empty()
        && c.identity_token.is_empty()
        && c.registry_token.is_empty();
    (!empty).then_some(c)
}

pub async fn pull_image(daemon: &Daemon, req: PullImageRequest) -> Result<PullImageResponse> {
    let image = req.image.map(|i| i.image).unwrap_or_default();
    if image.is_empty() {
        return Err(Error::InvalidArgument("image reference is empty".into()));
    }
    let images = daemon.images()?;
    let from_request = req.auth.and_then(credentials);
    let creds = match from_request {
        Some(c) => Some(c),
        None => {
            let reference = images.parse(&image)?;
            daemon.auth_file_credentials(&reference.registry).await
        }
    };
    let record = images.pull_image(&image, creds.as_ref()).await?;
    Ok(PullImageResponse {
        image_ref: record.id.clone(),
    })
}
