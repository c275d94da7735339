//! Image volumes (`Mount.image`, KEP-4639) end to end: the real daemon, runc and crun, the
//! `layered` image of the loopback registry fixture mounted into busybox containers.
#![allow(clippy::unwrap_used)]

use crius_e2e::busybox::BusyboxDaemon;
use crius_e2e::daemon::{Daemon, Options};
use crius_e2e::network::mounts_under;
use crius_e2e::{pods, registry};
use k8s_cri::v1 as cri;

fn userns(host_base: u32) -> cri::UserNamespace {
    let map = cri::IdMapping {
        host_id: host_base,
        container_id: 0,
        length: 65536,
    };
    cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: vec![map],
        gids: vec![map],
    }
}

async fn run_pod(
    d: &Daemon,
    name: &str,
    handler: &str,
    host_base: Option<u32>,
) -> (String, cri::PodSandboxConfig) {
    let mut req = pods::pod(name);
    req.runtime_handler = handler.into();
    if let Some(base) = host_base {
        pods::namespaces(&mut req).userns_options = Some(userns(base));
    }
    let config = req.config.clone().unwrap();
    let id = d
        .runtime()
        .await
        .run_pod_sandbox(req)
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    (id, config)
}

/// A sleeping busybox container with `volume` mounted at `/vol` (not asked read-only: an image
/// volume is read-only whatever the request says).
fn with_volume(busybox: &str, volume: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        mounts: vec![cri::Mount {
            container_path: "/vol".into(),
            image: Some(cri::ImageSpec {
                image: volume.into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..pods::container("c", busybox, &["sleep", "1000"])
    }
}

async fn create(
    d: &Daemon,
    pod: &(String, cri::PodSandboxConfig),
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.0.clone(),
            config: Some(config),
            sandbox_config: Some(pod.1.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn sh(d: &Daemon, id: &str, script: &str) -> (i32, String, String) {
    let out = d
        .runtime()
        .await
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

async fn remove_image(d: &Daemon, image: &str) -> Result<(), tonic::Status> {
    d.image()
        .await
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await
        .map(|_| ())
}

/// Pulls `image` and returns its ref as container statuses report it (a repo digest, else the
/// id) and its id.
async fn pull(d: &Daemon, image: &str) -> (String, String) {
    let spec = cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    };
    let mut client = d.image().await;
    client
        .pull_image(cri::PullImageRequest {
            image: Some(spec.clone()),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap();
    let status = client
        .image_status(cri::ImageStatusRequest {
            image: Some(spec),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    (
        status
            .repo_digests
            .first()
            .cloned()
            .unwrap_or(status.id.clone()),
        status.id,
    )
}

async fn remove_pod(d: &Daemon, pod_id: &str) {
    let mut rt = d.runtime().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.into(),
    })
    .await
    .unwrap();
}

/// The image's files are readable, nothing in it can be written or executed, and its owner is
/// root inside (idmapped in a user-namespace pod); the status names the image and its ref.
async fn check_volume(d: &Daemon, id: &str, what: &str, layered: &str, layered_ref: &str) {
    let (code, out, err) = sh(
        d,
        id,
        "cat /vol/layer4 /vol/data/keep; test ! -e /vol/data/gone && echo whiteout-applied; \
         stat -c %u:%g /vol/layer4 /vol/data",
    )
    .await;
    assert_eq!(code, 0, "{what}: {out} {err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["layer4", "keep", "whiteout-applied", "0:0", "0:0"],
        "{what}"
    );
    let (code, _, err) = sh(d, id, "echo x > /vol/new").await;
    assert_ne!(code, 0, "{what}: wrote into the image volume");
    assert!(err.contains("Read-only file system"), "{what}: {err}");
    let (code, _, err) = sh(d, id, "echo x > /vol/layer4").await;
    assert_ne!(code, 0, "{what}: overwrote a file of the image volume");
    assert!(err.contains("Read-only file system"), "{what}: {err}");
    let (code, _, err) = sh(d, id, "/vol/bin/busybox true").await;
    assert_ne!(code, 0, "{what}: executed from a noexec image volume");
    assert!(err.contains("Permission denied"), "{what}: {err}");
    let (code, out, _) = sh(d, id, "grep ' /vol ' /proc/self/mounts").await;
    assert_eq!(code, 0, "{what}");
    let options = out
        .split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_string();
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(options.split(',').any(|x| x == o), "{what}: {out}");
    }

    let status = d
        .runtime()
        .await
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let mount = status
        .mounts
        .iter()
        .find(|m| m.container_path == "/vol")
        .unwrap();
    let image = mount.image.as_ref().unwrap();
    assert_eq!(image.image, layered_ref, "{what}: resolved ref");
    assert_eq!(image.user_specified_image, layered, "{what}");
}

#[tokio::test]
async fn image_volumes_mount_an_image_read_only_keep_it_in_use_and_survive_restarts() {
    let BusyboxDaemon {
        mut d,
        net: _net,
        image: busybox,
    } = BusyboxDaemon::start(Options::default()).await;
    let layered = registry::shared().layered_ref();

    // Not pulled: NotFound naming the image, and nothing is left behind.
    let pod = run_pod(&d, "iv-missing", "", None).await;
    let err = create(&d, &pod, with_volume(&busybox, &layered))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains(&layered), "{}", err.message());
    assert!(err.message().contains("/vol"), "{}", err.message());
    remove_pod(&d, &pod.0).await;
    assert_eq!(mounts_under(&d.paths.runroot), 0);
    assert_eq!(mounts_under(&d.paths.root), 0);

    let (layered_ref, layered_id) = pull(&d, &layered).await;

    // A create that fails after the volume was mounted (a later mount's host path is
    // missing) unmounts it and leaves the image free.
    let pod = run_pod(&d, "iv-rollback", "", None).await;
    let mut config = with_volume(&busybox, &layered);
    config.mounts.push(cri::Mount {
        container_path: "/missing".into(),
        host_path: "/nonexistent/crius-e2e".into(),
        ..Default::default()
    });
    let err = create(&d, &pod, config).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    remove_pod(&d, &pod.0).await;
    assert_eq!(mounts_under(&d.paths.runroot), 0);
    assert_eq!(mounts_under(&d.paths.root), 0);
    let listed = |d: &Daemon| {
        let root = d.paths.root.clone();
        move || std::fs::read_dir(root.join("containers")).map_or(0, |e| e.count())
    };

    for (handler, userns_base) in [
        ("runc", None),
        ("crun", None),
        ("runc", Some(200_000u32)),
        ("crun", Some(265_536u32)),
    ] {
        let what = format!("{handler}, user namespace {userns_base:?}");
        let pod = run_pod(
            &d,
            &format!("iv-{handler}-{}", userns_base.is_some()),
            handler,
            userns_base,
        )
        .await;
        let id = create(&d, &pod, with_volume(&busybox, &layered))
            .await
            .unwrap();
        d.runtime()
            .await
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
        check_volume(&d, &id, &what, &layered, &layered_ref).await;

        // In use: the image stays.
        let err = remove_image(&d, &layered).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "{what}: {err:?}"
        );
        assert!(err.message().contains(&id), "{what}: {}", err.message());
        remove_pod(&d, &pod.0).await;
        assert_eq!(mounts_under(&d.paths.runroot), 0, "{what}");
        assert_eq!(mounts_under(&d.paths.root), 0, "{what}");
        assert_eq!(listed(&d)(), 0, "{what}: container storage left");
    }

    // Across a daemon killed with -9: the volume stays mounted, the image in use; removing
    // the container releases both. This time the volume names the image by id, as kubelet
    // does with the ref PullImage returned.
    let pod = run_pod(&d, "iv-restart", "", None).await;
    let id = create(&d, &pod, with_volume(&busybox, &layered_id))
        .await
        .unwrap();
    d.runtime()
        .await
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    d.kill9();
    d.restart().await;
    check_volume(&d, &id, "after a restart", &layered_id, &layered_ref).await;
    let err = remove_image(&d, &layered).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    d.runtime()
        .await
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    remove_image(&d, &layered).await.unwrap();
    remove_pod(&d, &pod.0).await;
    assert_eq!(mounts_under(&d.paths.runroot), 0);
    assert_eq!(mounts_under(&d.paths.root), 0);

    // Removed: NotFound again.
    let pod = run_pod(&d, "iv-removed", "", None).await;
    let err = create(&d, &pod, with_volume(&busybox, &layered))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    remove_pod(&d, &pod.0).await;
}
