//! The setup most container tests share: a daemon that trusts the loopback registry, a private
//! CNI network, and the busybox image pulled.

use k8s_cri::v1 as cri;

use crate::daemon::{Daemon, Options};
use crate::network::TestNetwork;
use crate::registry;

/// A running daemon with busybox pulled, on its own test network.
pub struct BusyboxDaemon {
    pub d: Daemon,
    pub net: TestNetwork,
    /// The busybox reference pulled.
    pub image: String,
}

impl BusyboxDaemon {
    /// Starts the daemon with `options` (the registry table is appended to its extra config).
    pub async fn start(options: Options) -> BusyboxDaemon {
        let fx = registry::shared();
        let net = TestNetwork::new();
        let extra_config = format!(
            "{}\n[image.registries.\"{}\"]\ninsecure = true\n",
            options.extra_config,
            fx.registry_addr()
        );
        let d = Daemon::start_with(Options {
            extra_config,
            ..options
        })
        .await;
        net.install(&d.paths.cni_conf_dir, &[]);
        let image = fx.busybox_ref();
        d.image()
            .await
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .expect("pull busybox");
        BusyboxDaemon { d, net, image }
    }
}
