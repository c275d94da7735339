//! Domain tests against the recording fake network (real namespaces and tmpfs: root only).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::network::fake::FakeNetwork;
use super::spec::tests::runc_default;
use super::*;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn open(dir: &Path, network: Arc<FakeNetwork>) -> Arc<Sandboxes> {
    open_with(dir, network, crate::events::Events::new())
}

fn open_with(
    dir: &Path,
    network: Arc<FakeNetwork>,
    events: Arc<crate::events::Events>,
) -> Arc<Sandboxes> {
    let settings = Settings {
        pods_dir: dir.join("run/pods"),
        shm_size: 1 << 20,
        monitor: PathBuf::from("/nonexistent/crius-conmon"),
        host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
        user_namespaces: Err("not probed in unit tests".into()),
    };
    let metrics = Metrics::new().unwrap();
    Sandboxes::open(&dir.join("root"), settings, network, None, metrics, events)
        .unwrap()
        .0
}

fn spec(name: &str) -> PodSpec {
    let req = k8s_cri::v1::RunPodSandboxRequest {
        config: Some(k8s_cri::v1::PodSandboxConfig {
            metadata: Some(k8s_cri::v1::PodSandboxMetadata {
                name: name.into(),
                uid: "u".into(),
                namespace: "ns".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            // What kubelet sends for a pod without shareProcessNamespace.
            linux: Some(k8s_cri::v1::LinuxPodSandboxConfig {
                security_context: Some(k8s_cri::v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(k8s_cri::v1::NamespaceOption {
                        pid: k8s_cri::v1::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    };
    spec::pod_spec(&req, &runc_default()).unwrap()
}

#[tokio::test]
async fn failed_network_setup_unwinds_every_step_and_releases_the_name() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(FakeNetwork::default());
    *net.fail_setup.lock().unwrap() = Some("no more addresses".into());
    let events = crate::events::Events::new();
    let (mut rx, _) = events.subscribe();
    let pods = open_with(dir.path(), net.clone(), events);
    let err = pods.run(spec("a"), Default::default()).await.unwrap_err();
    assert!(err.to_string().contains("no more addresses"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("run/pods"))
            .unwrap()
            .count(),
        0
    );
    assert!(pods.list(&Filter::default()).is_empty());
    // The retry is a fresh create, not a stale reservation.
    *net.fail_setup.lock().unwrap() = None;
    let id = pods.run(spec("a"), Default::default()).await.unwrap();
    assert_eq!(pods.run(spec("a"), Default::default()).await.unwrap(), id);
    let rec = pods.get(&id).unwrap();
    assert_eq!(rec.ips, vec!["10.99.0.2".to_string()]);
    assert_eq!(rec.pinned, vec!["net", "uts", "ipc"]);
    pods.remove(&id).await.unwrap();
    pods.remove(&id).await.unwrap();
    pods.stop(&id).await.unwrap();
    assert!(net.attached.lock().unwrap().is_empty());
    // The failed create published nothing; the retry one pod's lifecycle, once.
    use crate::events::EventKind::*;
    let mut seen = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        assert_eq!(ev.id, id);
        assert_eq!(ev.pod.as_ref().map(|p| p.id.as_str()), Some(id.as_str()));
        seen.push(ev.kind);
    }
    assert_eq!(seen, [Created, Started, Stopped, Deleted]);
    assert!(!rec.run_dir.exists());
    let calls = net.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("teardown")).count(),
        1
    );
}

#[tokio::test]
async fn a_reopened_store_keeps_ready_pods_and_cleans_orphans() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Arc::new(FakeNetwork::default());
    let pods = open(dir.path(), net.clone());
    let id = pods.run(spec("kept"), Default::default()).await.unwrap();
    // An orphan: a run dir and an attachment with no record (a crash mid-create).
    let orphan = dir.path().join("run/pods/deadbeef");
    std::fs::create_dir_all(&orphan).unwrap();
    net.attached.lock().unwrap().push("deadbeef".into());
    drop(pods);
    let pods = open(dir.path(), net.clone());
    assert_eq!(pods.get(&id).unwrap().state, SandboxState::Ready);
    assert!(!orphan.exists());
    assert_eq!(*net.attached.lock().unwrap(), vec![id.clone()]);
    // A pod whose namespaces vanished (reboot) comes back NotReady and released.
    let ns_dir = pods.get(&id).unwrap().ns_dir();
    crius_cni::remove_pinned(&ns_dir).unwrap();
    drop(pods);
    let pods = open(dir.path(), net.clone());
    assert_eq!(pods.get(&id).unwrap().state, SandboxState::NotReady);
    assert!(net.attached.lock().unwrap().is_empty());
    pods.remove(&id).await.unwrap();
}
