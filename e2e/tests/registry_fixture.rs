//! The e2e image fixtures: the OCI layout is reproducible and the loopback registry serves
//! every test image with the expected digests, formats and platforms.
//!
//! Needs `docker-registry`, `skopeo` and `/bin/busybox` (busybox-static) on the host.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crius_e2e::fixtures::{self, build_layout, media_type, sha256_digest, Image, Layout};
use crius_e2e::registry::{http_request, shared, skopeo, Pushed, Registry};
use serde_json::Value;

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn blob_names(layout: &Path) -> BTreeSet<String> {
    fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn read_blob(layout: &Layout, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    fs::read(layout.dir.join("blobs/sha256").join(hex)).unwrap()
}

#[test]
fn layout_build_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = build_layout(a.path()).unwrap();
    let second = build_layout(b.path()).unwrap();
    let rebuilt = build_layout(a.path()).unwrap();

    assert_eq!(first, rebuilt, "rebuilding in place changed the layout");
    let same_dir = Layout {
        dir: first.dir.clone(),
        ..second.clone()
    };
    assert_eq!(first, same_dir, "two builds gave different digests");
    assert_eq!(
        fs::read(a.path().join("index.json")).unwrap(),
        fs::read(b.path().join("index.json")).unwrap()
    );
    assert_eq!(blob_names(a.path()), blob_names(b.path()));
    // Rebuilding in place must not leave temp files or extra blobs behind.
    assert_eq!(blob_names(a.path()).len(), blob_names(b.path()).len());
}

#[test]
fn layout_blobs_match_their_digests_and_configs() {
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path()).unwrap();

    for name in blob_names(dir.path()) {
        let bytes = fs::read(dir.path().join("blobs/sha256").join(&name)).unwrap();
        assert_eq!(
            sha256_digest(&bytes),
            format!("sha256:{name}"),
            "blob {name} is corrupt"
        );
    }
    let check = |image: &Image, arch: &str, layers: usize| {
        assert_eq!(image.architecture, arch);
        assert_eq!(image.layers.len(), layers);
        let config = json(&read_blob(&layout, image.image_id()));
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
        assert_eq!(config["config"]["Env"][0], fixtures::PATH_ENV);
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(diff_ids, image.diff_ids());
        let manifest = json(&read_blob(&layout, &image.manifest.digest));
        assert_eq!(manifest["config"]["digest"], image.image_id());
        assert_eq!(manifest["layers"].as_array().unwrap().len(), layers);
    };
    check(&layout.busybox, "amd64", 1);
    check(&layout.layered, "amd64", 4);
    assert_eq!(
        layout.layered.layers[0], layout.busybox.layers[0],
        "base layer not shared"
    );
    let diff_ids: BTreeSet<String> = layout.layered.diff_ids().into_iter().collect();
    assert_eq!(diff_ids.len(), 4, "layered layers are not distinct");
    assert_eq!(layout.multiarch.manifests.len(), 2);
    assert_eq!(layout.multiarch.manifests[0], layout.busybox);
    check(&layout.multiarch.manifests[1], "arm64", 1);
    assert_ne!(
        layout.multiarch.manifests[1].layers[0],
        layout.busybox.layers[0]
    );

    let index = json(&fs::read(dir.path().join("index.json")).unwrap());
    let tags: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["annotations"][fixtures::REF_NAME_ANNOTATION]
                .as_str()
                .unwrap();
            (name.to_owned(), m["digest"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        tags,
        vec![
            ("busybox".to_owned(), layout.busybox.manifest.digest.clone()),
            ("layered".to_owned(), layout.layered.manifest.digest.clone()),
            (
                "multiarch".to_owned(),
                layout.multiarch.index.digest.clone()
            ),
        ]
    );
}

/// `skopeo inspect` of `reference`; for a list, of its `arch` instance.
fn inspect(reference: &str, arch: Option<&str>) -> Value {
    let mut args: Vec<OsString> = Vec::new();
    if let Some(arch) = arch {
        args.extend(["--override-arch".into(), arch.into()]);
    }
    args.extend(["inspect".into(), "--tls-verify=false".into()]);
    args.push(format!("docker://{reference}").into());
    json(&skopeo(&args).unwrap())
}

fn layer_digests(image: &Image) -> Vec<String> {
    image.layers.iter().map(|l| l.blob.digest.clone()).collect()
}

fn source_image<'a>(layout: &'a Layout, pushed: &Pushed, arch: &str) -> &'a Image {
    match pushed.source {
        fixtures::BUSYBOX => &layout.busybox,
        fixtures::LAYERED => &layout.layered,
        fixtures::MULTIARCH => layout.multiarch.for_arch(arch).unwrap(),
        other => panic!("unknown source {other}"),
    }
}

#[test]
fn every_reference_is_pushed() {
    let fx = shared();
    let refs: Vec<&str> = fx.pushed().iter().map(|p| p.reference.as_str()).collect();
    let addr = fx.registry_addr();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let want: Vec<String> = ["busybox", "layered", "multiarch"]
        .iter()
        .flat_map(|n| ["latest", "v2s2"].map(|t| format!("{addr}/crius-test/{n}:{t}")))
        .collect();
    assert_eq!(refs, want);
    assert_eq!(fx.busybox_ref(), want[0]);
    assert_eq!(fx.busybox_v2s2_ref(), want[1]);
    assert_eq!(fx.layered_ref(), want[2]);
    assert_eq!(fx.layered_v2s2_ref(), want[3]);
    assert_eq!(fx.multiarch_ref(), want[4]);
    assert_eq!(fx.multiarch_v2s2_ref(), want[5]);
}

#[test]
fn skopeo_inspect_reports_architecture_and_layers() {
    let fx = shared();
    let layout = fx.layout();
    for pushed in fx.pushed() {
        for arch in if pushed.is_list() {
            vec!["amd64", "arm64"]
        } else {
            vec!["amd64"]
        } {
            let info = inspect(&pushed.reference, pushed.is_list().then_some(arch));
            let image = source_image(layout, pushed, arch);
            let what = format!("{} ({arch})", pushed.reference);
            assert_eq!(info["Architecture"], arch, "{what}");
            assert_eq!(info["Os"], "linux", "{what}");
            let layers: Vec<String> = info["Layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(layers, layer_digests(image), "{what}");
            // For a list, skopeo reports the digest of the list it was given.
            assert_eq!(info["Digest"], pushed.digest.as_str(), "{what}");
        }
    }
}

#[test]
fn raw_manifests_match_docker_content_digest_and_layout() {
    let fx = shared();
    let layout = fx.layout();
    for pushed in fx.pushed() {
        let what = &pushed.reference;
        for reference in [pushed.tag.as_str(), pushed.digest.as_str()] {
            let resp = fx
                .registry()
                .get_manifest(&pushed.repository, reference)
                .unwrap();
            assert_eq!(resp.status, 200, "{what} by {reference}");
            assert_eq!(
                resp.header("content-type"),
                Some(pushed.media_type),
                "{what}"
            );
            let digest = sha256_digest(&resp.body);
            assert_eq!(
                resp.header("docker-content-digest"),
                Some(digest.as_str()),
                "{what}"
            );
            assert_eq!(digest, pushed.digest, "{what}");
            let manifest = json(&resp.body);
            assert_eq!(manifest["mediaType"], pushed.media_type, "{what}");
        }
        let body = fx
            .registry()
            .get_manifest(&pushed.repository, &pushed.tag)
            .unwrap()
            .body;
        match (pushed.source, pushed.tag.as_str()) {
            // OCI pushes keep the layout's bytes.
            (fixtures::MULTIARCH, "latest") => {
                assert_eq!(pushed.digest, layout.multiarch.index.digest);
                assert_eq!(body, read_blob(layout, &layout.multiarch.index.digest));
            }
            (_, "latest") => {
                let image = source_image(layout, pushed, "amd64");
                assert_eq!(pushed.digest, image.manifest.digest, "{what}");
                assert_eq!(body, read_blob(layout, &image.manifest.digest), "{what}");
            }
            (fixtures::MULTIARCH, _) => {} // checked in multiarch_lists_both_platforms
            // Docker pushes are converted, but keep the config (image ID) and layer blobs.
            _ => {
                let image = source_image(layout, pushed, "amd64");
                assert_docker_manifest(&json(&body), image, what);
            }
        }
    }
}

fn assert_docker_manifest(manifest: &Value, image: &Image, what: &str) {
    assert_eq!(manifest["schemaVersion"], 2, "{what}");
    assert_eq!(manifest["mediaType"], media_type::DOCKER_MANIFEST, "{what}");
    assert_eq!(
        manifest["config"]["mediaType"],
        media_type::DOCKER_CONFIG,
        "{what}"
    );
    assert_eq!(manifest["config"]["digest"], image.image_id(), "{what}");
    let layers = manifest["layers"].as_array().unwrap();
    let digests: Vec<&str> = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests, layer_digests(image), "{what}");
    for layer in layers {
        assert_eq!(layer["mediaType"], media_type::DOCKER_LAYER_GZIP, "{what}");
    }
}

fn platforms(list: &Value) -> Vec<(String, String, String)> {
    list["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let s = |v: &Value| v.as_str().unwrap().to_owned();
            (
                s(&m["platform"]["os"]),
                s(&m["platform"]["architecture"]),
                s(&m["digest"]),
            )
        })
        .collect()
}

#[test]
fn multiarch_lists_both_platforms() {
    let fx = shared();
    let layout = fx.layout();
    let reg = fx.registry();
    let repo = "crius-test/multiarch";

    let oci = reg.get_manifest(repo, "latest").unwrap();
    let oci = json(&oci.body);
    assert_eq!(oci["mediaType"], media_type::OCI_INDEX);
    let amd64 = &layout.multiarch.manifests[0];
    let arm64 = &layout.multiarch.manifests[1];
    assert_eq!(
        platforms(&oci),
        vec![
            (
                "linux".into(),
                "amd64".into(),
                amd64.manifest.digest.clone()
            ),
            (
                "linux".into(),
                "arm64".into(),
                arm64.manifest.digest.clone()
            ),
        ]
    );

    let docker = reg.get_manifest(repo, "v2s2").unwrap();
    assert_eq!(docker.header("content-type"), Some(media_type::DOCKER_LIST));
    let docker = json(&docker.body);
    let list = platforms(&docker);
    let arches: Vec<(&str, &str)> = list
        .iter()
        .map(|(o, a, _)| (o.as_str(), a.as_str()))
        .collect();
    assert_eq!(arches, vec![("linux", "amd64"), ("linux", "arm64")]);
    for entry in docker["manifests"].as_array().unwrap() {
        assert_eq!(entry["mediaType"], media_type::DOCKER_MANIFEST);
    }
    // Conversion is deterministic: the amd64 instance is exactly busybox:v2s2.
    let busybox_v2s2 = fx.find(fixtures::BUSYBOX, "v2s2").unwrap();
    assert_eq!(list[0].2, busybox_v2s2.digest);
    for ((_, arch, digest), image) in list.iter().zip([amd64, arm64]) {
        let resp = reg.get_manifest(repo, digest).unwrap();
        assert_eq!(resp.status, 200, "{arch} instance {digest}");
        assert_eq!(sha256_digest(&resp.body), *digest);
        assert_docker_manifest(&json(&resp.body), image, &format!("multiarch:v2s2 {arch}"));
    }
    let pushed = fx.find(fixtures::MULTIARCH, "v2s2").unwrap();
    let instances: Vec<&str> = pushed.instances.iter().map(|i| i.digest.as_str()).collect();
    assert_eq!(
        instances,
        list.iter().map(|(_, _, d)| d.as_str()).collect::<Vec<_>>()
    );
}

/// distribution 2.8 hides OCI manifests from clients that do not name the OCI type.
#[test]
fn oci_manifest_needs_oci_accept_header() {
    let fx = shared();
    let addr = fx.registry().socket_addr();
    let path = "/v2/crius-test/busybox/manifests/latest";
    assert_eq!(
        http_request(addr, "GET", path, &[], &[]).unwrap().status,
        404
    );
    let accept = [("Accept", media_type::OCI_MANIFEST)];
    assert_eq!(
        http_request(addr, "GET", path, &accept, &[])
            .unwrap()
            .status,
        200
    );
}

fn gone_or_zombie(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Field 3, after the parenthesized command name, is the state.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dropping_a_registry_kills_reaps_and_cleans_up() {
    let registry = Registry::start().unwrap();
    let pid = registry.pid().unwrap();
    let dir = registry.dir().to_path_buf();
    let config = fs::read_to_string(dir.join("config.yml")).unwrap();
    assert!(
        config.contains(&format!("addr: {}", registry.addr())),
        "{config}"
    );
    assert!(registry.addr().starts_with("127.0.0.1:"));
    let resp = http_request(registry.socket_addr(), "GET", "/v2/", &[], &[]).unwrap();
    assert_eq!(resp.status, 200);
    drop(registry);
    // Reaped by Drop: not even a zombie is left.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "registry {pid} not reaped"
    );
    assert!(!dir.exists(), "{} not removed", dir.display());
}

const HELPER_ENV: &str = "CRIUS_E2E_REGISTRY_HELPER";

/// Not a test: the child process of `registry_dies_with_a_killed_test_process`.
#[test]
#[ignore = "helper process for registry_dies_with_a_killed_test_process"]
fn helper_start_registry_and_hang() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let registry = Registry::start().unwrap();
    println!("REGISTRY_DIR {}", registry.dir().display());
    println!("REGISTRY_PID {}", registry.pid().unwrap());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn registry_dies_with_a_killed_test_process() {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_start_registry_and_hang",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines().map(|l| l.unwrap());
    let mut field = |key: &str| {
        let value = lines.find_map(|l| l.strip_prefix(key).map(str::to_owned));
        value.unwrap_or_else(|| {
            let _ = helper.kill();
            let _ = helper.wait();
            panic!("helper printed no {key}");
        })
    };
    let dir = std::path::PathBuf::from(field("REGISTRY_DIR "));
    let pid: u32 = field("REGISTRY_PID ").parse().unwrap();
    assert!(!gone_or_zombie(pid), "registry {pid} not running");
    helper.kill().unwrap(); // SIGKILL: no Drop, no atexit
    helper.wait().unwrap();
    wait_until(&format!("registry {pid} is dead"), || gone_or_zombie(pid));
    // The dead process's registry dir is swept by the next start.
    assert!(dir.exists(), "{}", dir.display());
    drop(Registry::start().unwrap());
    assert!(!dir.exists(), "{} not swept", dir.display());
}

#[test]
fn http_client_reports_refused_connections_with_context() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = http_request(port, "GET", "/v2/", &[], &[]).unwrap_err();
    assert!(
        err.to_string().contains(&format!("GET http://{port}/v2/")),
        "{err}"
    );
}
