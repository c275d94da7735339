//! ImageService e2e against the loopback `docker-registry`: pulls (OCI, Docker v2s2, indexes,
//! by tag and digest), unpacked trees under overlayfs, malicious layers, auth (request
//! credentials and `auth_file`), HTTPS (untrusted, `insecure`, `ca_file`), loopback registries
//! without a table (`insecure_loopback`), mirrors,
//! tampered blobs, crash-safety, blob dedup across concurrent pulls, removal and garbage
//! collection, pull metrics. Needs `openssl` besides the registry tools.

#![allow(clippy::unwrap_used)] // Tests fail by panicking.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius_e2e::daemon::{metric_value, Daemon, Options};
use crius_e2e::fixtures::{self, Node, LAYERED_ABSENT, LAYERED_PRESENT};
use crius_e2e::registry::{self, push_layout, Registry};
use k8s_cri::v1 as cri;

fn insecure(addr: &str) -> String {
    format!("[image.registries.\"{addr}\"]\ninsecure = true\n")
}

async fn daemon_for(extra: &str) -> Daemon {
    let fx = registry::shared();
    Daemon::start_with(Options {
        extra_config: format!("{}{extra}", insecure(&fx.registry_addr())),
        ..Options::default()
    })
    .await
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(d: &Daemon, image: &str) -> Result<String, tonic::Status> {
    pull_with(d, image, None).await
}

async fn pull_with(
    d: &Daemon,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    d.image()
        .await
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(d: &Daemon, image: &str, verbose: bool) -> cri::ImageStatusResponse {
    d.image()
        .await
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn list(d: &Daemon) -> Vec<cri::Image> {
    d.image()
        .await
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn remove(d: &Daemon, image: &str) {
    d.image()
        .await
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .unwrap();
}

async fn fs_usage(d: &Daemon) -> (u64, u64) {
    let info = d
        .image()
        .await
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let fs = &info.image_filesystems[0];
    assert!(fs.timestamp > 0);
    (fs.used_bytes.unwrap().value, fs.inodes_used.unwrap().value)
}

/// `name@digest` for a pushed reference `host/repo:tag`.
fn digested(reference: &str, digest: &str) -> String {
    let name = reference.rsplit_once(':').unwrap().0;
    format!("{name}@{digest}")
}

fn layer_dirs(verbose: &cri::ImageStatusResponse) -> Vec<PathBuf> {
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    info["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| PathBuf::from(l["dir"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn pulls_oci_docker_and_multiarch_images_by_tag_and_by_digest() {
    let fx = registry::shared();
    let layout = fx.layout();
    let d = daemon_for("").await;
    let busybox_id = layout.busybox.image_id().to_string();
    let cases = [
        (
            fx.busybox_ref(),
            busybox_id.clone(),
            fx.find("busybox", "latest").unwrap().digest.clone(),
        ),
        (
            fx.busybox_v2s2_ref(),
            busybox_id.clone(),
            fx.find("busybox", "v2s2").unwrap().digest.clone(),
        ),
        (
            fx.layered_ref(),
            layout.layered.image_id().to_string(),
            fx.find("layered", "latest").unwrap().digest.clone(),
        ),
        (
            fx.multiarch_ref(),
            busybox_id.clone(),
            layout.multiarch.index.digest.clone(),
        ),
        (
            fx.multiarch_v2s2_ref(),
            busybox_id.clone(),
            fx.find("multiarch", "v2s2").unwrap().digest.clone(),
        ),
    ];
    for (reference, id, repo_digest) in &cases {
        assert_eq!(&pull(&d, reference).await.unwrap(), id, "pull {reference}");
        let by_digest = digested(reference, repo_digest);
        assert_eq!(&pull(&d, &by_digest).await.unwrap(), id, "pull {by_digest}");
        let st = status(&d, reference, false).await;
        let image = st
            .image
            .unwrap_or_else(|| panic!("no status for {reference}"));
        assert_eq!(&image.id, id);
        assert!(image.repo_tags.contains(reference), "{:?}", image.repo_tags);
        assert!(
            image.repo_digests.contains(&by_digest),
            "{:?} lacks {by_digest}",
            image.repo_digests
        );
        assert!(image.size > 0);
        assert_eq!(status(&d, &by_digest, false).await.image.unwrap().id, *id);
    }
    let images = list(&d).await;
    assert_eq!(images.len(), 2, "busybox (5 names) and layered: {images:?}");
    let busybox = images.iter().find(|i| i.id == busybox_id).unwrap();
    assert_eq!(busybox.repo_tags.len(), 4, "{:?}", busybox.repo_tags);
    assert!(busybox.uid.is_none() && busybox.username.is_empty());

    // Lookups by id and id prefix; unknown images are an empty status, not an error.
    assert_eq!(
        status(&d, &busybox_id, false).await.image.unwrap().id,
        busybox_id
    );
    assert_eq!(
        status(&d, &busybox_id[7..19], false)
            .await
            .image
            .unwrap()
            .id,
        busybox_id
    );
    assert!(status(
        &d,
        &format!("{}/crius-test/nope:latest", fx.registry_addr()),
        false
    )
    .await
    .image
    .is_none());

    // ListImages honours its filter.
    let filtered = d
        .image()
        .await
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&fx.layered_ref()),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].id, layout.layered.image_id());

    // Verbose status names the layers, chain ids and the config.
    let v = status(&d, &fx.layered_ref(), true).await;
    let info: serde_json::Value = serde_json::from_str(&v.info["info"]).unwrap();
    assert_eq!(info["layers"].as_array().unwrap().len(), 4);
    assert_eq!(
        info["config"]["rootfs"]["diff_ids"][0],
        layout.layered.layers[0].diff_id
    );
}

#[tokio::test]
async fn errors_name_what_was_wrong() {
    let fx = registry::shared();
    let d = daemon_for("").await;
    let err = pull(&d, "UPPER/Case:bad tag").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let missing = format!("{}/crius-test/busybox:no-such-tag", fx.registry_addr());
    let err = pull(&d, &missing).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("no-such-tag"), "{}", err.message());
    let err = pull(&d, "127.0.0.1:1/x/y:latest").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("127.0.0.1:1"), "{}", err.message());
    let (code, body) = d.http_get("/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        metric_value(&body, "crius_image_pulls_total{result=\"NotFound\"}"),
        Some(1.0),
        "{body}"
    );
}

/// Mounts `lowers` (top first) read-only with overlayfs in a private mount namespace and
/// returns every path with its type and, for regular files, its sha256.
fn overlay_tree(lowers: &[PathBuf]) -> BTreeMap<String, String> {
    let mnt = tempfile::tempdir().unwrap();
    let lowerdir = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let script = format!(
        "set -e; mount -t overlay overlay -o ro,lowerdir={lowerdir} {m}; cd {m}; \
         find . -mindepth 1 -printf '%y %p %l\\n'; echo ===; find . -type f -exec sha256sum {{}} +",
        m = mnt.path().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (types, sums) = text.split_once("===\n").unwrap();
    let mut tree = BTreeMap::new();
    for line in types.lines() {
        let mut parts = line.splitn(3, ' ');
        let (kind, path, link) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap_or(""),
        );
        let path = path.trim_start_matches('.').to_string();
        let value = if kind == "l" {
            format!("l {link}")
        } else {
            kind.to_string()
        };
        tree.insert(path, value);
    }
    for line in sums.lines() {
        let (sum, path) = line.split_once("  ").unwrap();
        tree.insert(path.trim_start_matches('.').to_string(), format!("f {sum}"));
    }
    tree
}

fn sha256_hex(data: &[u8]) -> String {
    fixtures::sha256_digest(data)
        .trim_start_matches("sha256:")
        .to_string()
}

#[tokio::test]
async fn layered_image_under_overlayfs_shows_exactly_the_expected_tree() {
    let fx = registry::shared();
    let d = daemon_for("").await;
    for reference in [fx.layered_ref(), fx.layered_v2s2_ref()] {
        pull(&d, &reference).await.unwrap();
        let mut lowers = layer_dirs(&status(&d, &reference, true).await);
        lowers.reverse(); // overlayfs wants the top layer first
        let tree = overlay_tree(&lowers);
        for (path, node) in LAYERED_PRESENT {
            let got = tree.get(*path).unwrap_or_else(|| panic!("{path} missing"));
            match node {
                Node::Dir => assert_eq!(got, "d", "{path}"),
                Node::File(content) => assert_eq!(
                    got,
                    &format!("f {}", sha256_hex(content.as_bytes())),
                    "{path}"
                ),
                Node::Executable => assert!(got.starts_with("f "), "{path}: {got}"),
                Node::Symlink(target) => assert_eq!(got, &format!("l {target}"), "{path}"),
            }
        }
        for path in LAYERED_ABSENT {
            assert!(!tree.contains_key(*path), "{path} must not exist");
        }
        // The whole tree, not only the paths named above: nothing more, nothing less.
        let expected = layered_tree_paths();
        let got: BTreeSet<String> = tree.keys().cloned().collect();
        let missing: Vec<_> = expected.difference(&got).collect();
        let unexpected: Vec<_> = got.difference(&expected).collect();
        assert!(
            missing.is_empty() && unexpected.is_empty(),
            "{reference}: missing {missing:?}, unexpected {unexpected:?}"
        );
        for applet in fixtures::busybox_applets().unwrap() {
            let path = format!("/bin/{applet}");
            assert_eq!(tree[&path], "l busybox", "{path}");
        }
        assert_eq!(
            tree["/etc/group"],
            format!("f {}", sha256_hex(fixtures::GROUP.as_bytes()))
        );
        assert_eq!(tree["/root"], "d");
    }
}

/// Every path of the `layered` root filesystem: the busybox layer (`/bin/busybox` and its
/// applet symlinks, `/etc/{passwd,group}`, `/root`, `/tmp`) plus what layers 2-4 leave.
fn layered_tree_paths() -> BTreeSet<String> {
    let mut paths: BTreeSet<String> = [
        "/bin",
        "/bin/busybox",
        "/etc",
        "/etc/passwd",
        "/etc/group",
        "/root",
        "/tmp",
        "/data",
        "/data/keep",
        "/opq",
        "/opq/new",
        "/layer4",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for applet in fixtures::busybox_applets().unwrap() {
        paths.insert(format!("/bin/{applet}"));
    }
    // LAYERED_PRESENT is a subset (a typo in one list shows up here).
    for (path, _) in LAYERED_PRESENT {
        assert!(paths.contains(*path), "{path} is not in the expected tree");
    }
    paths
}

// ---- hand-crafted layers ----

/// One raw tar header + data, bypassing the tar crate's path checks.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish_tar(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn push_custom(
    name: &str,
    tars: &[Vec<u8>],
    registry_addr: &str,
    creds: Option<&str>,
) -> (String, fixtures::Image) {
    let dir = tempfile::tempdir().unwrap();
    let image = fixtures::write_custom_layout(dir.path(), name, tars).unwrap();
    let reference = format!("{registry_addr}/crius-test/{name}:latest");
    push_layout(
        &format!("oci:{}:{name}", dir.path().display()),
        &reference,
        creds,
    )
    .unwrap();
    (reference, image)
}

fn tree_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn malicious_layers_fail_the_pull_and_write_nothing_outside_the_store() {
    let fx = registry::shared();
    let d = daemon_for("").await;
    let outside = tempfile::tempdir().unwrap();
    let out = outside.path().display().to_string();
    let depth = "../".repeat(16);
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "original").unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", {
            let mut t = Vec::new();
            raw_entry(
                &mut t,
                &format!("{depth}{}/dotdot", out.trim_start_matches('/')),
                tar::EntryType::Regular,
                "",
                b"x",
            );
            finish_tar(t)
        }),
        ("absolute", {
            let mut t = Vec::new();
            raw_entry(
                &mut t,
                &format!("{out}/absolute"),
                tar::EntryType::Regular,
                "",
                b"x",
            );
            finish_tar(t)
        }),
        ("symlink-escape", {
            let mut t = Vec::new();
            raw_entry(&mut t, "evil", tar::EntryType::Symlink, &out, b"");
            raw_entry(&mut t, "evil/pwned", tar::EntryType::Regular, "", b"x");
            finish_tar(t)
        }),
        ("symlink-overwrite", {
            let mut t = Vec::new();
            raw_entry(&mut t, "dir", tar::EntryType::Symlink, &out, b"");
            raw_entry(&mut t, "dir/victim", tar::EntryType::Regular, "", b"pwned");
            finish_tar(t)
        }),
        ("hardlink-outside", {
            let mut t = Vec::new();
            let target = format!(
                "{depth}{}",
                victim.display().to_string().trim_start_matches('/')
            );
            raw_entry(&mut t, "link", tar::EntryType::Link, &target, b"");
            finish_tar(t)
        }),
    ];
    let store = d.paths.root.join("images");
    for (name, tar) in cases {
        let (reference, _) =
            push_custom(&format!("evil-{name}"), &[tar], &fx.registry_addr(), None);
        let err = pull(&d, &reference).await.expect_err(name);
        assert!(
            matches!(
                err.code(),
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
            ),
            "{name}: {err:?}"
        );
        assert!(
            status(&d, &reference, false).await.image.is_none(),
            "{name} was stored"
        );
        let names: Vec<_> = std::fs::read_dir(outside.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("victim")],
            "{name} wrote outside"
        );
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "original",
            "{name}"
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&victim).unwrap().nlink(),
            1,
            "{name} hard-linked the victim"
        );
        let leftovers = tree_files(&store.join("tmp"));
        assert!(leftovers.is_empty(), "{name} left {leftovers:?}");
    }
    assert!(list(&d).await.is_empty());
}

#[tokio::test]
async fn a_registry_with_htpasswd_auth_needs_the_request_credentials() {
    let fx = registry::shared();
    let reg = Registry::start_with_auth("crius", "s3cret").unwrap();
    let layout_ref = fx.layout().oci_reference(fixtures::BUSYBOX);
    let reference = format!("{}/private/busybox:latest", reg.addr());
    push_layout(&layout_ref, &reference, Some("crius:s3cret")).unwrap();
    let d = Daemon::start_with(Options {
        extra_config: insecure(&reg.addr()),
        ..Options::default()
    })
    .await;

    let err = pull(&d, &reference).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let wrong = cri::AuthConfig {
        username: "crius".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = pull_with(&d, &reference, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let right = cri::AuthConfig {
        username: "crius".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    let id = pull_with(&d, &reference, Some(right)).await.unwrap();
    assert_eq!(id, fx.layout().busybox.image_id());
    // The base64 `auth` form works too.
    remove(&d, &reference).await;
    let auth = cri::AuthConfig {
        auth: "Y3JpdXM6czNjcmV0".into(),
        ..Default::default()
    }; // crius:s3cret
    assert_eq!(pull_with(&d, &reference, Some(auth)).await.unwrap(), id);
}

#[tokio::test]
async fn mirrors_with_a_path_prefix_serve_other_hosts_and_dead_mirrors_are_unavailable() {
    let fx = registry::shared();
    let addr = fx.registry_addr();
    let extra = format!(
        "[image.registries.\"registry.example\"]\nmirrors = [\"127.0.0.1:1/dead\", \"{addr}/crius-test\"]\ninsecure = true\n\
         [image.registries.\"only-dead.example\"]\nmirrors = [\"127.0.0.1:1/dead\"]\nmirror_only = true\ninsecure = true\n"
    );
    let d = daemon_for(&extra).await;
    let id = pull(&d, "registry.example/busybox:latest").await.unwrap();
    assert_eq!(id, fx.layout().busybox.image_id());
    let image = status(&d, "registry.example/busybox", false)
        .await
        .image
        .unwrap();
    assert_eq!(
        image.repo_tags,
        vec!["registry.example/busybox:latest".to_string()]
    );

    let err = pull(&d, "only-dead.example/busybox:latest")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("127.0.0.1:1"), "{}", err.message());
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn file_layer(name: &str, data: &[u8]) -> Vec<u8> {
    fixtures::single_file_tar(name, data).unwrap()
}

#[tokio::test]
async fn kill_9_during_a_pull_leaves_no_partial_image_and_a_repull_reuses_finished_layers() {
    let fx = registry::shared();
    let (reference, image) = push_custom(
        "large",
        &[
            file_layer("small", b"small layer\n"),
            file_layer("big", &noise(96 << 20, 7)),
        ],
        &fx.registry_addr(),
        None,
    );
    let mut d = daemon_for("").await;
    let images_dir = d.paths.root.join("images");
    let client = d.image().await;
    let pulling = tokio::spawn(async move {
        let mut c = client;
        c.pull_image(cri::PullImageRequest {
            image: spec(&reference),
            ..Default::default()
        })
        .await
    });
    // Wait until the small layer is complete and the big one is streaming, then kill -9.
    let small = images_dir
        .join("layers")
        .join(image.layers[0].diff_id.trim_start_matches("sha256:"));
    // The layer counts as finished once its record is written too (the first layer's chain id
    // is its diff id), not only its directory renamed into place.
    let small_record = d.paths.root.join("layer").join(format!(
        "{}.json",
        image.layers[0].diff_id.trim_start_matches("sha256:")
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let streaming = std::fs::read_dir(images_dir.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name().to_string_lossy().starts_with("blob")
                    && e.metadata().map(|m| m.len() > (4 << 20)).unwrap_or(false)
            });
        if streaming && small.exists() && small_record.exists() {
            break;
        }
        assert!(
            !pulling.is_finished(),
            "pull finished before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "pull never got going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    d.kill9();
    let _ = pulling.await;
    d.restart().await;
    let reference = format!("{}/crius-test/large:latest", fx.registry_addr());
    assert!(list(&d).await.is_empty(), "a partial image is listed");
    assert!(
        tree_files(&images_dir.join("tmp")).is_empty(),
        "partial files survived the restart"
    );

    assert_eq!(pull(&d, &reference).await.unwrap(), image.image_id());
    let (_, body) = d.http_get("/metrics");
    assert_eq!(
        metric_value(&body, "crius_image_layers_reused_total"),
        Some(1.0),
        "{body}"
    );
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_download_each_blob_once() {
    let fx = registry::shared();
    let d = daemon_for("").await;
    let reference = fx.layered_ref();
    let (a, b) = tokio::join!(pull(&d, &reference), pull(&d, &reference));
    assert_eq!(a.unwrap(), b.unwrap());
    let layered = &fx.layout().layered;
    let expected: u64 =
        layered.config.size + layered.layers.iter().map(|l| l.blob.size).sum::<u64>();
    let (_, body) = d.http_get("/metrics");
    assert_eq!(
        metric_value(&body, "crius_image_pull_bytes_total"),
        Some(expected as f64),
        "{body}"
    );
    assert_eq!(
        metric_value(&body, "crius_image_layers_reused_total"),
        Some(4.0),
        "{body}"
    );
    assert_eq!(
        metric_value(&body, "crius_image_pulls_total{result=\"success\"}"),
        Some(2.0)
    );
}

#[tokio::test]
async fn remove_image_frees_unshared_layers_keeps_shared_ones_and_survives_restart() {
    let fx = registry::shared();
    let layout = fx.layout();
    let pinned = format!("[image]\npinned_images = [\"{}\"]\n", fx.busybox_ref());
    let mut d = daemon_for(&pinned).await;
    pull(&d, &fx.busybox_ref()).await.unwrap();
    let (bytes_one, inodes_one) = fs_usage(&d).await;
    pull(&d, &fx.layered_ref()).await.unwrap();
    let (bytes_two, inodes_two) = fs_usage(&d).await;
    assert!(bytes_two > bytes_one && inodes_two > inodes_one);
    let busybox = status(&d, &fx.busybox_ref(), false).await.image.unwrap();
    assert!(busybox.pinned);
    assert!(
        !status(&d, &fx.layered_ref(), false)
            .await
            .image
            .unwrap()
            .pinned
    );

    let layered_dirs = layer_dirs(&status(&d, &fx.layered_ref(), true).await);
    assert_eq!(layered_dirs.len(), 4);
    remove(&d, layout.layered.image_id()).await;
    assert!(layered_dirs[0].exists(), "the shared base layer was freed");
    for dir in &layered_dirs[1..] {
        assert!(!dir.exists(), "{} was kept", dir.display());
    }
    // The freed files leave through the trash, deleted in the background: usage drops soon.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs_usage(&d).await.0 >= bytes_two {
        assert!(
            Instant::now() < deadline,
            "usage never dropped after removal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remove(&d, layout.layered.image_id()).await; // idempotent

    d.kill9();
    d.restart().await;
    let images = list(&d).await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, layout.busybox.image_id());
    remove(&d, &fx.busybox_ref()).await;
    assert!(list(&d).await.is_empty());
    assert!(!layered_dirs[0].exists());
    let left = std::fs::read_dir(d.paths.root.join("images/layers"))
        .unwrap()
        .count();
    assert_eq!(left, 0);
}

/// Waits (polling, generous deadline) until `dir` holds nothing.
async fn until_empty(dir: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = entries_below(dir);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still there: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 15: RemoveImage answers once the records are gone and the layer dirs are out of the
/// way (moved to the trash, deleted in the background); a pull of the same image right after
/// must unpack it again under the same names, complete.
#[tokio::test]
async fn an_image_pulled_again_right_after_removal_is_complete_and_the_old_files_go_away() {
    let fx = registry::shared();
    let d = daemon_for("").await;
    let images = d.paths.root.join("images");
    let reference = fx.layered_ref();
    pull(&d, &reference).await.unwrap();
    let mut lowers = layer_dirs(&status(&d, &reference, true).await);
    lowers.reverse();
    let tree = overlay_tree(&lowers);
    assert_eq!(
        tree.keys().cloned().collect::<BTreeSet<_>>(),
        layered_tree_paths()
    );
    for round in 0..3 {
        remove(&d, &reference).await;
        assert!(status(&d, &reference, false).await.image.is_none());
        for dir in &lowers {
            assert!(!dir.exists(), "round {round}: {} kept", dir.display());
        }
        pull(&d, &reference).await.unwrap();
        let mut again = layer_dirs(&status(&d, &reference, true).await);
        again.reverse();
        assert_eq!(again, lowers, "round {round}: same chain IDs, same dirs");
        assert_eq!(overlay_tree(&again), tree, "round {round}");
    }
    remove(&d, &reference).await;
    for dir in &lowers {
        assert!(!dir.exists(), "{} kept", dir.display());
    }
    until_empty(&images.join("trash"), "the image trash").await;
    assert!(entries_below(&images.join("layers")).is_empty());
    assert!(entries_below(&images.join("blobs/sha256")).is_empty());
    assert!(list(&d).await.is_empty());
}

/// The overlayfs tree of a pulled image (top layer first).
async fn image_tree(d: &Daemon, reference: &str) -> BTreeMap<String, String> {
    let mut lowers = layer_dirs(&status(d, reference, true).await);
    lowers.reverse();
    overlay_tree(&lowers)
}

/// Every entry below each layer dir of a pulled image: type, symlink target or content hash.
async fn layers_content(d: &Daemon, reference: &str) -> Vec<BTreeMap<String, String>> {
    layer_dirs(&status(d, reference, true).await)
        .iter()
        .map(|dir| {
            tree_files(dir)
                .into_iter()
                .map(|p| {
                    let m = p.symlink_metadata().unwrap();
                    let what = if m.is_dir() {
                        "d".to_string()
                    } else if m.file_type().is_symlink() {
                        format!("l {}", std::fs::read_link(&p).unwrap().display())
                    } else if m.is_file() {
                        format!("f {}", sha256_hex(&std::fs::read(&p).unwrap()))
                    } else {
                        "o".to_string()
                    };
                    (p.strip_prefix(dir).unwrap().display().to_string(), what)
                })
                .collect()
        })
        .collect()
}

/// Issue 15: a `kill -9` at any moment of a RemoveImage loses nothing of another image sharing
/// its base layer; the removed image is gone or whole after the restart, and the trash is empty.
#[tokio::test]
async fn kill_9_during_remove_image_keeps_the_other_images_whole() {
    let fx = registry::shared();
    let mut d = daemon_for("").await;
    let (busybox, layered) = (fx.busybox_ref(), fx.layered_ref());
    pull(&d, &busybox).await.unwrap();
    let busybox_tree = layers_content(&d, &busybox).await;
    assert!(!busybox_tree[0].is_empty());
    let trash = d.paths.root.join("images/trash");
    // Kill points from "the request is on its way" to "the answer is near".
    for (round, delay_us) in [0u64, 300, 1_000, 3_000, 10_000].into_iter().enumerate() {
        pull(&d, &layered).await.unwrap();
        let mut client = d.image().await;
        let target = layered.clone();
        let removing = tokio::spawn(async move {
            client
                .remove_image(cri::RemoveImageRequest {
                    image: spec(&target),
                })
                .await
        });
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        d.kill9();
        let _ = removing.await;
        d.restart().await;
        assert_eq!(
            layers_content(&d, &busybox).await,
            busybox_tree,
            "round {round}: busybox changed"
        );
        if status(&d, &layered, false).await.image.is_some() {
            assert_eq!(
                image_tree(&d, &layered)
                    .await
                    .keys()
                    .cloned()
                    .collect::<BTreeSet<_>>(),
                layered_tree_paths(),
                "round {round}: layered kept but incomplete"
            );
        }
        assert!(
            entries_below(&trash).is_empty(),
            "round {round}: trash kept"
        );
    }
    remove(&d, &layered).await;
    assert_eq!(list(&d).await.len(), 1);
    assert_eq!(layers_content(&d, &busybox).await, busybox_tree);
}

#[tokio::test]
async fn sighup_reloads_registry_mirrors_without_a_restart() {
    let fx = registry::shared();
    let d = daemon_for("").await;
    let err = pull(&d, "reload.example/busybox:latest").await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    std::fs::write(
        d.paths.config_dir.join("50-mirror.toml"),
        format!(
            "[image.registries.\"reload.example\"]\nmirrors = [\"{}/crius-test\"]\nmirror_only = true\ninsecure = true\n",
            fx.registry_addr()
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = pull(&d, "reload.example/busybox:latest").await.unwrap();
    assert_eq!(id, fx.layout().busybox.image_id());
}

#[tokio::test]
async fn pull_duration_histogram_counts_every_pull() {
    let fx = registry::shared();
    let d = daemon_for("").await;
    let count = |body: &str| metric_value(body, "crius_image_pull_duration_seconds_count");
    let (_, body) = d.http_get("/metrics");
    assert_eq!(count(&body), Some(0.0), "{body}");

    pull(&d, &fx.busybox_ref()).await.unwrap();
    let (_, body) = d.http_get("/metrics");
    assert_eq!(count(&body), Some(1.0), "{body}");
    let sum = metric_value(&body, "crius_image_pull_duration_seconds_sum").unwrap();
    assert!(sum > 0.0, "{body}");
    assert_eq!(
        metric_value(
            &body,
            "crius_image_pull_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        Some(1.0),
        "{body}"
    );

    // Failed pulls are timed too.
    let missing = format!("{}/crius-test/busybox:no-such-tag", fx.registry_addr());
    pull(&d, &missing).await.unwrap_err();
    let (_, body) = d.http_get("/metrics");
    assert_eq!(count(&body), Some(2.0), "{body}");
}

/// `insecure` for `addr` plus a `ca_file`, as a registry table.
fn registry_table(addr: &str, insecure: bool, ca_file: Option<&Path>) -> String {
    let mut table = format!("[image.registries.\"{addr}\"]\ninsecure = {insecure}\n");
    if let Some(ca) = ca_file {
        table.push_str(&format!("ca_file = {:?}\n", ca.display().to_string()));
    }
    table
}

/// `[image] insecure_loopback = false`: loopback registries are verified like any other.
const LOOPBACK_OFF: &str = "[image]\ninsecure_loopback = false\n";

async fn daemon_with(extra_config: String) -> Daemon {
    Daemon::start_with(Options {
        extra_config,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn https_registry_needs_a_trusted_certificate_or_insecure() {
    let fx = registry::shared();
    let reg = Registry::start_tls().unwrap();
    let reference = format!("{}/crius-test/busybox:latest", reg.addr());
    push_layout(
        &fx.layout().oci_reference(fixtures::BUSYBOX),
        &reference,
        None,
    )
    .unwrap();
    let busybox_id = fx.layout().busybox.image_id();

    // A loopback registry is insecure by default: TLS without verification.
    let d = daemon_with(String::new()).await;
    assert_eq!(pull(&d, &reference).await.unwrap(), busybox_id);
    drop(d);

    // Verified TLS against a CA nobody trusts (the loopback rule off): Unavailable, naming the
    // host and the cause.
    let d = daemon_with(LOOPBACK_OFF.into()).await;
    let err = pull(&d, &reference).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let msg = err.message();
    assert!(msg.contains(&reg.addr()), "{msg}");
    assert!(msg.contains("https"), "{msg}");
    assert!(msg.contains("certificate"), "{msg}");
    assert!(list(&d).await.is_empty());
    drop(d);

    // A CA that did not issue the certificate (the server's own leaf) does not help either.
    let leaf = reg.dir().join("server.pem");
    let d = daemon_with(registry_table(&reg.addr(), false, Some(&leaf))).await;
    let err = pull(&d, &reference).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("certificate"), "{}", err.message());
    drop(d);

    // An unreadable ca_file is a node misconfiguration, named.
    let d = daemon_with(registry_table(
        &reg.addr(),
        false,
        Some(Path::new("/nonexistent/ca.pem")),
    ))
    .await;
    let err = pull(&d, &reference).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("ca_file /nonexistent/ca.pem"),
        "{err:?}"
    );
    drop(d);

    // insecure = true: TLS without verification (the registry speaks nothing else).
    let d = daemon_with(registry_table(&reg.addr(), true, None)).await;
    assert_eq!(pull(&d, &reference).await.unwrap(), busybox_id);
    drop(d);

    // ca_file = the registry's CA: verified TLS works.
    let d = daemon_with(registry_table(&reg.addr(), false, Some(&reg.ca_cert()))).await;
    assert_eq!(pull(&d, &reference).await.unwrap(), busybox_id);
    let image = status(&d, &reference, false).await.image.unwrap();
    assert_eq!(image.repo_tags, vec![reference.clone()]);
}

/// Issue 11 item 6: critest pulls with a 1 ms deadline and expects DeadlineExceeded; tonic's
/// own `grpc-timeout` timer answered Cancelled. A tonic client enforces the timeout itself (and
/// says Cancelled too), so the request goes out through the raw client, which waits for the
/// daemon's answer.
#[tokio::test]
async fn a_pull_whose_client_deadline_passes_answers_deadline_exceeded() {
    use crius_e2e::grpc_raw::{self, Conn};
    let fx = registry::shared();
    let d = daemon_for("").await;
    let pull = |timeout: &str| {
        let block = grpc_raw::c_core_block(
            "/runtime.v1.ImageService/PullImage",
            "localhost",
            &[("grpc-timeout", timeout)],
        );
        let body = grpc_raw::grpc_message(&cri::PullImageRequest {
            image: spec(&fx.busybox_ref()),
            auth: None,
            sandbox_config: None,
        });
        (block, body)
    };
    const TRIES: usize = 5;
    for attempt in 0..TRIES {
        let mut conn = Conn::connect(&d.paths.socket).await;
        let (block, body) = pull("1m");
        let call = conn.call(&block, &body).await;
        assert_eq!(call.reset, None, "attempt {attempt}: {call:?}");
        assert_eq!(
            call.grpc_status(),
            Some(tonic::Code::DeadlineExceeded as i32),
            "attempt {attempt}: {call:?}"
        );
    }
    let (_, body) = d.http_get("/metrics");
    assert_eq!(
        metric_value(
            &body,
            "crius_operations_errors_total{code=\"DeadlineExceeded\",operation=\"PullImage\"}"
        ),
        Some(TRIES as f64),
        "{body}"
    );
    // A deadline that leaves time is met, and nothing of the abandoned pulls is in the way.
    let mut conn = Conn::connect(&d.paths.socket).await;
    let (block, body) = pull("60S");
    let call = conn.call(&block, &body).await;
    assert_eq!(call.grpc_status(), Some(0), "{call:?}");
    let resp: cri::PullImageResponse = call.message().unwrap();
    assert_eq!(resp.image_ref, fx.layout().busybox.image_id());
}

/// Issue 11 item 7: `crictl pull 127.0.0.1:5000/...` failed with a TLS error unless a registry
/// table marked the host insecure; containerd falls back to plain HTTP for loopback hosts.
#[tokio::test]
async fn loopback_registries_need_no_table_unless_insecure_loopback_is_off() {
    let fx = registry::shared();
    let addr = fx.registry_addr();
    let port = addr.rsplit_once(':').unwrap().1;
    let busybox_id = fx.layout().busybox.image_id();
    let by_name = format!("localhost:{port}/crius-test/busybox:latest");

    let d = daemon_with(String::new()).await;
    assert_eq!(pull(&d, &fx.busybox_ref()).await.unwrap(), busybox_id);
    assert_eq!(pull(&d, &by_name).await.unwrap(), busybox_id);
    let image = status(&d, &by_name, false).await.image.unwrap();
    assert!(image.repo_tags.contains(&by_name), "{image:?}");
    drop(d);

    let d = daemon_with(LOOPBACK_OFF.into()).await;
    for reference in [fx.busybox_ref(), by_name] {
        let err = pull(&d, &reference).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{reference}: {err:?}");
        assert!(err.message().contains("https"), "{}", err.message());
    }
    assert!(list(&d).await.is_empty());
    drop(d);

    // An explicit table still works with the rule off.
    let d = daemon_with(format!("{LOOPBACK_OFF}{}", insecure(&addr))).await;
    assert_eq!(pull(&d, &fx.busybox_ref()).await.unwrap(), busybox_id);
}

#[tokio::test]
async fn auth_file_credentials_are_used_when_the_request_has_none() {
    let fx = registry::shared();
    let reg = Registry::start_with_auth("crius", "s3cret").unwrap();
    let reference = format!("{}/private/busybox:latest", reg.addr());
    push_layout(
        &fx.layout().oci_reference(fixtures::BUSYBOX),
        &reference,
        Some("crius:s3cret"),
    )
    .unwrap();
    let files = tempfile::tempdir().unwrap();
    let auth_file = files.path().join("auth.json");
    let d = daemon_with(format!(
        "{}[image]\nauth_file = {:?}\n",
        insecure(&reg.addr()),
        auth_file.display().to_string()
    ))
    .await;
    let write_auth = |auth: &str| {
        let doc = serde_json::json!({"auths": {reg.addr(): {"auth": auth}}});
        std::fs::write(&auth_file, doc.to_string()).unwrap();
    };

    // The configured file does not exist yet: no credentials.
    let err = pull(&d, &reference).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&reg.addr()), "{}", err.message());

    // Wrong password in the file (re-read per pull, no restart): refused.
    write_auth("Y3JpdXM6bm9wZQ=="); // crius:nope
    let err = pull(&d, &reference).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // The right credentials in the file: the pull works without AuthConfig.
    write_auth("Y3JpdXM6czNjcmV0"); // crius:s3cret
    assert_eq!(
        pull(&d, &reference).await.unwrap(),
        fx.layout().busybox.image_id()
    );

    // Credentials in the request win over the file.
    remove(&d, &reference).await;
    let wrong = cri::AuthConfig {
        username: "crius".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = pull_with(&d, &reference, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(list(&d).await.is_empty());
}

/// Every entry (files and dirs) below `dir`, relative, sorted; empty if `dir` is missing.
fn entries_below(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = tree_files(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_tampered_blob_fails_the_pull_and_nothing_of_it_is_kept() {
    let reg = Registry::start().unwrap();
    let d = daemon_with(insecure(&reg.addr())).await;
    let images = d.paths.root.join("images");
    // (case, where to flip 4 bytes of the gzip blob). Decoders ignore the gzip header's
    // MTIME (bytes 4..8): only the digest check can catch that. In the middle of the blob
    // the flip lands in file data (noise is stored uncompressed), which the tar framing
    // cannot notice either; the blob's digest fails on its last byte, before the gzip CRC.
    let cases = [("mtime", 4usize), ("middle", usize::MAX)];
    for (case, offset) in cases {
        let name = format!("tampered-{case}");
        let (reference, image) = push_custom(
            &name,
            &[
                file_layer("base", format!("{case} base\n").as_bytes()),
                file_layer("big", &noise(1 << 20, offset as u64)),
            ],
            &reg.addr(),
            None,
        );
        let tampered = &image.layers[1];
        let data = reg.blob_data_path(&tampered.blob.digest);
        let original = std::fs::read(&data).unwrap();
        assert_eq!(original.len() as u64, tampered.blob.size);
        let mut bad = original.clone();
        let at = offset.min(bad.len() / 2);
        for b in &mut bad[at..at + 4] {
            *b ^= 0xff;
        }
        std::fs::write(&data, &bad).unwrap();

        let err = pull(&d, &reference).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::FailedPrecondition,
            "{case}: {err:?}"
        );
        for needle in ["digest mismatch", tampered.blob.digest.as_str()] {
            assert!(err.message().contains(needle), "{case}: {}", err.message());
        }
        assert!(list(&d).await.is_empty(), "{case}: an image is listed");
        assert!(status(&d, &reference, false).await.image.is_none());
        // The verified base layer may stay for a re-pull; nothing of the tampered one does.
        let base_chain = hex(&image.layers[0].diff_id);
        let tampered_chain = hex(&chain_id(&image.layers[0].diff_id, &tampered.diff_id));
        assert!(
            !images.join("layers").join(&tampered_chain).exists(),
            "{case}"
        );
        assert!(
            !d.paths
                .root
                .join(format!("layer/{tampered_chain}.json"))
                .exists(),
            "{case}: a layer record for the tampered layer"
        );
        let blob = images.join("blobs/sha256").join(hex(&tampered.blob.digest));
        assert!(!blob.exists(), "{case}: the tampered blob was kept");
        assert!(
            entries_below(&images.join("tmp")).is_empty(),
            "{case}: tmp keeps {:?}",
            entries_below(&images.join("tmp"))
        );
        assert!(images.join("layers").join(&base_chain).exists(), "{case}");

        // Repaired at the registry, the same pull works and reuses the base layer.
        std::fs::write(&data, &original).unwrap();
        assert_eq!(
            pull(&d, &reference).await.unwrap(),
            image.image_id(),
            "{case}"
        );
        remove(&d, &reference).await;
    }
    assert!(entries_below(&images.join("layers")).is_empty());
}

fn hex(digest: &str) -> String {
    digest.trim_start_matches("sha256:").to_string()
}

/// The chain ID of a layer on top of the base layer `parent` (whose chain ID is its diff ID).
fn chain_id(parent: &str, diff_id: &str) -> String {
    fixtures::sha256_digest(format!("{parent} {diff_id}").as_bytes())
}

#[tokio::test]
async fn concurrent_pulls_of_images_sharing_layers_download_each_blob_once() {
    let fx = registry::shared();
    // A shares its base with B (same chain ID) and its big top layer too, at the same index
    // but on another parent: another chain ID, the same blob.
    let common = file_layer("common", b"shared base\n");
    let shared = file_layer("shared", &noise(16 << 20, 11));
    let (ref_a, a) = push_custom(
        "share-a",
        &[common.clone(), file_layer("a", b"a\n"), shared.clone()],
        &fx.registry_addr(),
        None,
    );
    let (ref_b, b) = push_custom(
        "share-b",
        &[common, file_layer("b", b"b\n"), shared],
        &fx.registry_addr(),
        None,
    );
    assert_eq!(a.layers[0].blob.digest, b.layers[0].blob.digest);
    assert_eq!(a.layers[2].blob.digest, b.layers[2].blob.digest);
    // Enough download slots that both copies of the shared blob could be fetched at once.
    let d = daemon_for("[image]\nmax_concurrent_downloads = 8\n").await;
    let (id_a, id_b) = tokio::join!(pull(&d, &ref_a), pull(&d, &ref_b));
    assert_eq!(id_a.unwrap(), a.image_id());
    assert_eq!(id_b.unwrap(), b.image_id());

    let mut blobs = BTreeMap::new();
    for layer in a.layers.iter().chain(&b.layers) {
        blobs.insert(layer.blob.digest.clone(), layer.blob.size);
    }
    assert_eq!(blobs.len(), 4, "common, a, b, shared");
    let expected = a.config.size + b.config.size + blobs.values().sum::<u64>();
    let (_, body) = d.http_get("/metrics");
    assert_eq!(
        metric_value(&body, "crius_image_pull_bytes_total"),
        Some(expected as f64),
        "{body}"
    );
    // Both top layers are unpacked (two chain IDs) from the one download.
    let mut tops = Vec::new();
    for reference in [&ref_a, &ref_b] {
        let dirs = layer_dirs(&status(&d, reference, true).await);
        assert_eq!(dirs.len(), 3, "{reference}");
        assert!(dirs[2].join("shared").is_file(), "{}", dirs[2].display());
        tops.push(dirs[2].clone());
    }
    assert_ne!(tops[0], tops[1]);
}
