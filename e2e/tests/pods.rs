//! Pod sandboxes end to end: the real daemon, real CNI plugins (bridge, host-local, portmap from
//! `/usr/lib/cni`), real namespaces. Each test has its own bridge and /24 with no route or
//! masquerade out of the machine; traffic goes only to loopback and to pod IPs on that bridge.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crius_e2e::cgroups::{TestCgroup, ROOT as CGROUP_ROOT};
use crius_e2e::daemon::{free_port, metric_value, Daemon, Options};
use crius_e2e::network::{mounts_under, run, TestNetwork};
use crius_e2e::pods;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

async fn start(net: &TestNetwork, options: Options) -> Daemon {
    let d = Daemon::start_with(options).await;
    net.install(&d.paths.cni_conf_dir, &[]);
    d
}

async fn run_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    req: cri::RunPodSandboxRequest,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(req)
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> (cri::PodSandboxStatus, serde_json::Value) {
    let resp = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info = serde_json::from_str(&resp.info["info"]).unwrap();
    (resp.status.unwrap(), info)
}

async fn stop_and_remove(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await
    .unwrap();
}

fn netns_of(info: &serde_json::Value) -> PathBuf {
    PathBuf::from(info["netns"].as_str().expect("netns path"))
}

/// Runs busybox `args` inside the pod's namespaces (`--net=...` style nsenter flags).
fn in_pod(ns_flags: &[String], args: &[&str]) -> (bool, String) {
    let mut all: Vec<&str> = ns_flags.iter().map(String::as_str).collect();
    all.push("busybox");
    all.extend_from_slice(args);
    run("nsenter", &all)
}

struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET / on 127.0.0.1:port, retrying while the server comes up (bounded).
fn http_get_loopback(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(out) if out.contains("200") => return out,
            other if Instant::now() > deadline => {
                panic!("no HTTP answer on port {port}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[tokio::test]
async fn pods_get_ips_reach_each_other_and_a_host_port() {
    let net = TestNetwork::new();
    let d = start(&net, Options::default()).await;
    let mut rt = d.runtime().await;

    let host_port = free_port();
    let mut a = pods::pod("web");
    pods::config(&mut a).port_mappings = vec![pods::tcp_port(i32::from(host_port), 8080)];
    let a_id = run_pod(&mut rt, a).await.unwrap();
    let b_id = run_pod(&mut rt, pods::pod("client")).await.unwrap();
    assert_eq!(a_id.len(), 64);

    let (a_status, a_info) = status(&mut rt, &a_id).await;
    let (b_status, b_info) = status(&mut rt, &b_id).await;
    assert_eq!(a_status.state, cri::PodSandboxState::SandboxReady as i32);
    let a_ip = a_status.network.unwrap().ip;
    let b_ip = b_status.network.unwrap().ip;
    assert!(a_ip.starts_with(&format!("{}.", net.prefix)), "{a_ip}");
    assert!(b_ip.starts_with(&format!("{}.", net.prefix)), "{b_ip}");
    assert_ne!(a_ip, b_ip);
    assert_eq!(net.ip_files(), {
        let mut v = vec![a_ip.clone(), b_ip.clone()];
        v.sort();
        v
    });
    let meta = a_status.metadata.unwrap();
    assert_eq!(
        (meta.name.as_str(), meta.namespace.as_str()),
        ("web", "e2e")
    );
    assert_eq!(
        a_status.runtime_handler,
        crius_e2e::daemon::default_handler()
    );
    assert!(a_status.created_at > 0);
    assert_eq!(a_info["network"], net.name);
    assert!(a_info["cniResult"]["ips"].is_array(), "{a_info}");

    // Pod to pod over the bridge.
    let b_net = format!("--net={}", netns_of(&b_info).display());
    let (ok, out) = in_pod(&[b_net], &["ping", "-c", "1", "-W", "2", &a_ip]);
    assert!(ok, "ping {a_ip} from pod b: {out}");

    // hostPort on loopback → busybox httpd inside pod a.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "hello from the pod\n").unwrap();
    let _httpd = Reap(
        Command::new("nsenter")
            .arg(format!("--net={}", netns_of(&a_info).display()))
            .args(["busybox", "httpd", "-f", "-p", "8080", "-h"])
            .arg(www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let reply = http_get_loopback(host_port);
    assert!(reply.contains("hello from the pod"), "{reply}");

    // List filters: id prefix, state, labels.
    let list = |filter: cri::PodSandboxFilter| cri::ListPodSandboxRequest {
        filter: Some(filter),
    };
    let items = rt
        .list_pod_sandbox(list(cri::PodSandboxFilter {
            id: a_id[..12].to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].id, a_id);
    let items = rt
        .list_pod_sandbox(list(cri::PodSandboxFilter {
            label_selector: [("app".to_string(), "client".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.iter().map(|p| &p.id).collect::<Vec<_>>(), vec![&b_id]);

    // Stop releases the IP and the netns; the pod stays listed NotReady until removed.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: a_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(net.ip_files(), vec![b_ip.clone()]);
    assert!(!netns_of(&a_info).exists());
    let (a_status, _) = status(&mut rt, &a_id).await;
    assert_eq!(a_status.state, cri::PodSandboxState::SandboxNotready as i32);
    let items = rt
        .list_pod_sandbox(list(cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.iter().map(|p| &p.id).collect::<Vec<_>>(), vec![&a_id]);

    // Stop and Remove twice succeed; a removed pod is NotFound.
    stop_and_remove(&mut rt, &a_id).await;
    stop_and_remove(&mut rt, &a_id).await;
    stop_and_remove(&mut rt, &b_id).await;
    let err = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: a_id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(net.ip_files().is_empty());
    assert_eq!(net.veths(), 0);
    assert_eq!(net.nat_rules(), 0, "portmap rules left");
    assert_eq!(mounts_under(&d.paths.runroot), 0);

    let (_, metrics) = d.http_get("/metrics");
    assert!(metric_value(&metrics, "crius_pod_network_setup_seconds_count").unwrap_or(0.0) >= 2.0);
    assert!(
        metric_value(&metrics, "crius_pod_network_teardown_seconds_count").unwrap_or(0.0) >= 2.0
    );
    assert_eq!(
        metric_value(&metrics, "crius_pods{state=\"ready\"}"),
        Some(0.0)
    );
}

#[tokio::test]
async fn pod_files_hostname_dns_sysctls_and_host_network() {
    let net = TestNetwork::new();
    let d = start(&net, Options::default()).await;
    let mut rt = d.runtime().await;

    let mut req = pods::pod("files");
    pods::config(&mut req).dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["e2e.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    pods::linux(&mut req).sysctls = [
        (
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "81".to_string(),
        ),
        ("kernel.shmmni".to_string(), "1234".to_string()),
    ]
    .into();
    let id = run_pod(&mut rt, req).await.unwrap();
    let (st, info) = status(&mut rt, &id).await;
    let run_dir = PathBuf::from(info["runDir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(run_dir.join("resolv.conf")).unwrap(),
        "search e2e.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("hostname")).unwrap(),
        "files\n"
    );
    let ip = st.network.unwrap().ip;
    let hosts = std::fs::read_to_string(run_dir.join("hosts")).unwrap();
    assert!(hosts.contains(&format!("{ip}\tfiles")), "{hosts}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let shm = run_dir.join("shm");
    let shm_line = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(shm.to_str().unwrap()))
        .expect("pod shm mounted");
    assert!(shm_line.contains("tmpfs"), "{shm_line}");
    assert!(shm_line.contains("size=65536k"), "{shm_line}");

    let uts = format!("--uts={}", info["utsns"].as_str().unwrap());
    let netf = format!("--net={}", info["netns"].as_str().unwrap());
    let ipc = format!("--ipc={}", info["ipcns"].as_str().unwrap());
    assert_eq!(in_pod(&[uts], &["hostname"]).1.trim(), "files");
    assert_eq!(
        in_pod(
            &[netf],
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        )
        .1
        .trim(),
        "81"
    );
    assert_eq!(
        in_pod(&[ipc], &["cat", "/proc/sys/kernel/shmmni"]).1.trim(),
        "1234"
    );
    // The host's values are untouched.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/shmmni")
            .unwrap()
            .trim(),
        "1234"
    );
    stop_and_remove(&mut rt, &id).await;
    assert!(!run_dir.exists());

    // hostNetwork: no netns, no CNI (no IP handed out), the host's hostname.
    let mut req = pods::pod("hostnet");
    pods::namespaces(&mut req).network = cri::NamespaceMode::Node as i32;
    pods::config(&mut req).hostname = String::new();
    let id = run_pod(&mut rt, req).await.unwrap();
    let (st, info) = status(&mut rt, &id).await;
    assert!(info["netns"].is_null(), "{info}");
    assert!(info["utsns"].is_null(), "{info}");
    assert!(!info["ipcns"].is_null(), "{info}");
    assert_eq!(st.network.unwrap_or_default().ip, "");
    assert!(net.ip_files().is_empty());
    assert_eq!(
        st.linux
            .unwrap()
            .namespaces
            .unwrap()
            .options
            .unwrap()
            .network,
        cri::NamespaceMode::Node as i32
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let run_dir = PathBuf::from(info["runDir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(run_dir.join("hostname")).unwrap(),
        host
    );
    stop_and_remove(&mut rt, &id).await;

    // Refusals: InvalidArgument naming the problem, nothing left behind.
    let mut bad = Vec::new();
    let mut r = pods::pod("bad1");
    pods::linux(&mut r).sysctls = [("kernel.panic".to_string(), "1".to_string())].into();
    bad.push((r, "kernel.panic"));
    let mut r = pods::pod("bad2");
    pods::namespaces(&mut r).network = cri::NamespaceMode::Node as i32;
    pods::linux(&mut r).sysctls = [("net.ipv4.ip_forward".to_string(), "1".to_string())].into();
    bad.push((r, "hostNetwork"));
    let mut r = pods::pod("bad3");
    r.runtime_handler = "kata".into();
    bad.push((r, "kata"));
    let mut r = pods::pod("bad4");
    pods::linux(&mut r).sysctls = [("net.ipv4.no_such_sysctl".to_string(), "1".to_string())].into();
    bad.push((r, "no_such_sysctl"));
    for (req, needle) in bad {
        let err = run_pod(&mut rt, req).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{needle}: {err:?}"
        );
        assert!(
            err.message().contains(needle),
            "{needle}: {}",
            err.message()
        );
    }
    let pods_dir = d.paths.runroot.join("pods");
    assert_eq!(std::fs::read_dir(&pods_dir).unwrap().count(), 0);
    assert!(net.ip_files().is_empty(), "{:?}", net.ip_files());
    assert_eq!(mounts_under(&d.paths.runroot), 0);
}

/// A chained plugin that fails ADD while `<dir>/fail` exists, with a CNI error message.
fn fake_plugin(dir: &Path) -> String {
    let script = format!(
        "#!/bin/sh\nset -e\ninput=$(cat)\n\
         if [ \"$CNI_COMMAND\" = ADD ]; then\n\
           if [ -e {dir}/fail ]; then\n\
             echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"fake plugin refuses this pod\"}}'\n\
             exit 1\n\
           fi\n\
           printf '%s' \"$input\" | jq -c .prevResult\n\
         fi\n",
        dir = dir.display()
    );
    let path = dir.join("crius-fake");
    std::fs::write(&path, script).unwrap();
    run("chmod", &["755", path.to_str().unwrap()]);
    r#"{"type":"crius-fake"}"#.to_string()
}

#[tokio::test]
async fn failing_plugin_leaves_nothing_and_the_retry_succeeds() {
    let net = TestNetwork::new();
    let bin = tempfile::tempdir().unwrap();
    let options = Options {
        drop_in: format!(
            "[network]\nbin_dirs = [{:?}, \"/usr/lib/cni\"]\n",
            bin.path()
        ),
        ..Options::default()
    };
    let d = Daemon::start_with(options).await;
    let plugin = fake_plugin(bin.path());
    net.install(&d.paths.cni_conf_dir, &[&plugin]);
    std::fs::write(bin.path().join("fail"), "").unwrap();
    let mut rt = d.runtime().await;

    let err = run_pod(&mut rt, pods::pod("flaky")).await.unwrap_err();
    assert!(
        err.message().contains("fake plugin refuses this pod"),
        "{err:?}"
    );
    let pods_dir = d.paths.runroot.join("pods");
    assert_eq!(std::fs::read_dir(&pods_dir).unwrap().count(), 0);
    assert_eq!(mounts_under(&d.paths.runroot), 0);
    assert!(net.ip_files().is_empty(), "{:?}", net.ip_files());
    assert_eq!(net.veths(), 0);
    let listed = pods::list_all(&mut rt).await;
    assert!(listed.is_empty());
    let cache = d.paths.root.join("cni/results");
    assert_eq!(std::fs::read_dir(&cache).map(|e| e.count()).unwrap_or(0), 0);

    // Same pod again once the plugin works: no stale reservation blocks it.
    std::fs::remove_file(bin.path().join("fail")).unwrap();
    let id = run_pod(&mut rt, pods::pod("flaky")).await.unwrap();
    assert_eq!(net.ip_files().len(), 1);
    stop_and_remove(&mut rt, &id).await;
    assert!(net.ip_files().is_empty());
}

#[tokio::test]
async fn concurrent_retries_get_one_pod() {
    let net = TestNetwork::new();
    let d = start(&net, Options::default()).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let mut rt = d.runtime().await;
        tasks.push(tokio::spawn(async move {
            run_pod(&mut rt, pods::pod("retried")).await.unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let mut rt = d.runtime().await;
    // A retry after the first finished gets the same id too.
    assert_eq!(
        run_pod(&mut rt, pods::pod("retried")).await.unwrap(),
        ids[0]
    );
    // Another attempt of the pod is a new sandbox.
    let mut next = pods::pod("retried");
    pods::config(&mut next).metadata.as_mut().unwrap().attempt = 1;
    let second = run_pod(&mut rt, next).await.unwrap();
    assert_ne!(second, ids[0]);
    assert_eq!(net.ip_files().len(), 2);
    for id in [&ids[0], &second] {
        stop_and_remove(&mut rt, id).await;
    }
    // Unknown ids: Stop and Remove succeed.
    stop_and_remove(
        &mut rt,
        "0000000000000000000000000000000000000000000000000000000000000000",
    )
    .await;
}

#[tokio::test]
async fn fifty_pods_ten_at_a_time_leave_nothing_behind() {
    let net = TestNetwork::new();
    let d = start(&net, Options::default()).await;
    let before = (net.ip_files().len(), net.veths(), net.nat_rules());
    let mut ids = Vec::new();
    for batch in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..10 {
            let mut rt = d.runtime().await;
            let mut req = pods::pod(&format!("p{batch}-{i}"));
            pods::config(&mut req).port_mappings =
                vec![pods::tcp_port(i32::from(free_port()), 8080)];
            tasks.push(tokio::spawn(async move { run_pod(&mut rt, req).await }));
        }
        for t in tasks {
            ids.push(t.await.unwrap().unwrap());
        }
    }
    assert_eq!(net.ip_files().len(), 50);
    assert_eq!(net.veths(), 50);
    assert!(net.nat_rules() >= 50);
    assert_eq!(mounts_under(&d.paths.runroot), 50 * 4);
    for chunk in ids.chunks(10) {
        let mut tasks = Vec::new();
        for id in chunk {
            let mut rt = d.runtime().await;
            let id = id.clone();
            tasks.push(tokio::spawn(
                async move { stop_and_remove(&mut rt, &id).await },
            ));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    assert_eq!((net.ip_files().len(), net.veths(), net.nat_rules()), before);
    assert_eq!(mounts_under(&d.paths.runroot), 0);
    assert_eq!(
        std::fs::read_dir(d.paths.runroot.join("pods"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn kill9_keeps_pods_and_ips_and_cleans_pods_without_records() {
    let net = TestNetwork::new();
    let mut d = start(&net, Options::default()).await;
    let mut rt = d.runtime().await;
    let mut before = Vec::new();
    for i in 0..5 {
        let id = run_pod(&mut rt, pods::pod(&format!("durable{i}")))
            .await
            .unwrap();
        let (st, _) = status(&mut rt, &id).await;
        before.push((id, st.network.unwrap().ip));
    }
    // One pod loses its record while the daemon is down: it must be cleaned at start.
    let (lost_id, lost_ip) = before.pop().unwrap();
    d.kill9();
    std::fs::remove_file(d.paths.root.join(format!("sandbox/{lost_id}.json"))).unwrap();
    d.restart().await;
    let mut rt = d.runtime().await;
    let mut after: Vec<(String, String)> = Vec::new();
    for p in pods::list_all(&mut rt).await {
        assert_eq!(p.state, cri::PodSandboxState::SandboxReady as i32);
        let (st, _) = status(&mut rt, &p.id).await;
        after.push((p.id, st.network.unwrap().ip));
    }
    before.sort();
    after.sort();
    assert_eq!(before, after);
    assert!(!net.ip_files().contains(&lost_ip), "{:?}", net.ip_files());
    assert!(!d.paths.runroot.join("pods").join(&lost_id).exists());
    assert_eq!(net.veths(), 4);
    for (id, _) in &before {
        stop_and_remove(&mut rt, id).await;
    }
    assert!(net.ip_files().is_empty());
    assert_eq!(mounts_under(&d.paths.runroot), 0);
}

#[tokio::test]
async fn pod_pid_namespace_runs_an_infra_pid1_that_stop_kills() {
    let net = TestNetwork::new();
    let d = start(&net, Options::default()).await;
    let mut rt = d.runtime().await;
    let mut req = pods::pod("sharedpid");
    pods::namespaces(&mut req).pid = cri::NamespaceMode::Pod as i32;
    let id = run_pod(&mut rt, req).await.unwrap();
    let (_, info) = status(&mut rt, &id).await;
    let pid = info["infraPid"].as_u64().expect("infra pid") as u32;
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = proc_status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    // It lives in the pod's network namespace.
    let pod_net = std::fs::metadata(info["netns"].as_str().unwrap()).unwrap();
    let infra_net = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(pod_net.ino(), infra_net.ino());
    stop_and_remove(&mut rt, &id).await;
    let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true);
    assert!(gone, "infra process {pid} still running");
}

/// A chained plugin that records what the daemon sends it: per call, the command in
/// `<dir>/calls`, the environment as JSON in `<dir>/<CMD>.env.json` and stdin in
/// `<dir>/<CMD>.stdin.json`. ADD prints the `prevResult` back with a DNS nameserver added, so
/// the test can tell that the daemon keeps the last plugin's result.
fn recording_plugin(dir: &Path) -> String {
    let script = format!(
        "#!/bin/sh\nset -e\ninput=$(cat)\n\
         echo \"$CNI_COMMAND\" >> {dir}/calls\n\
         jq -n env > {dir}/$CNI_COMMAND.env.json\n\
         printf '%s' \"$input\" > {dir}/$CNI_COMMAND.stdin.json\n\
         case \"$CNI_COMMAND\" in\n\
           ADD) printf '%s' \"$input\" | jq -c '.prevResult | .dns = {{\"nameservers\": [\"10.96.0.99\"]}}' ;;\n\
           VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}' ;;\n\
         esac\n",
        dir = dir.display()
    );
    let path = dir.join("crius-record");
    std::fs::write(&path, script).unwrap();
    run("chmod", &["755", path.to_str().unwrap()]);
    r#"{"type":"crius-record","capabilities":{"portMappings":true,"dns":true,"cgroupPath":true}}"#
        .to_string()
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// `K=V;K=V` → pairs in order.
fn cni_args(env: &serde_json::Value) -> Vec<(String, String)> {
    env["CNI_ARGS"]
        .as_str()
        .expect("CNI_ARGS set")
        .split(';')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("K=V");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[tokio::test]
async fn cni_plugins_get_pod_args_capabilities_and_the_chained_result() {
    let net = TestNetwork::new();
    let bin = tempfile::tempdir().unwrap();
    let options = Options {
        drop_in: format!(
            "[network]\nbin_dirs = [{:?}, \"/usr/lib/cni\"]\n",
            bin.path()
        ),
        ..Options::default()
    };
    let d = Daemon::start_with(options).await;
    let plugin = recording_plugin(bin.path());
    net.install(&d.paths.cni_conf_dir, &[&plugin]);
    let cgroup = TestCgroup::new("cni");
    let mut rt = d.runtime().await;

    let (tcp_port, udp_port) = (free_port(), free_port());
    let mut req = pods::pod("recorded");
    let cfg = pods::config(&mut req);
    cfg.metadata.as_mut().unwrap().uid = "6f1c0c1e-uid".into();
    cfg.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
        searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
        options: vec!["ndots:5".into(), "edns0".into()],
    });
    cfg.port_mappings = vec![
        cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: i32::from(tcp_port),
            host_ip: "127.0.0.1".into(),
        },
        cri::PortMapping {
            protocol: cri::Protocol::Udp as i32,
            container_port: 53,
            host_port: i32::from(udp_port),
            host_ip: String::new(),
        },
        // No host port: kubelet sends these for containerPort-only declarations; not for CNI.
        pods::tcp_port(0, 9090),
    ];
    pods::linux(&mut req).cgroup_parent = cgroup.child("podrec");
    let id = run_pod(&mut rt, req).await.unwrap();
    let (st, info) = status(&mut rt, &id).await;
    let netns = netns_of(&info);
    assert_eq!(
        std::fs::read_to_string(bin.path().join("calls")).unwrap(),
        "ADD\n"
    );

    // The environment: CNI_ARGS in kubelet's order, the pod id as container id, the pinned netns.
    let add_env = read_json(&bin.path().join("ADD.env.json"));
    assert_eq!(
        cni_args(&add_env),
        [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", "e2e"),
            ("K8S_POD_NAME", "recorded"),
            ("K8S_POD_INFRA_CONTAINER_ID", id.as_str()),
            ("K8S_POD_UID", "6f1c0c1e-uid"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(add_env["CNI_COMMAND"], "ADD");
    assert_eq!(add_env["CNI_CONTAINERID"], id.as_str());
    assert_eq!(add_env["CNI_NETNS"], netns.to_str().unwrap());
    assert_eq!(add_env["CNI_IFNAME"], "eth0");
    assert!(
        add_env["CNI_PATH"]
            .as_str()
            .unwrap()
            .contains(bin.path().to_str().unwrap()),
        "{add_env}"
    );

    // stdin: the network's name and version, the declared capabilities as runtimeConfig.
    let add_in = read_json(&bin.path().join("ADD.stdin.json"));
    assert_eq!(add_in["name"], net.name.as_str());
    assert_eq!(add_in["cniVersion"], "1.0.0");
    assert_eq!(add_in["type"], "crius-record");
    let expected_runtime = serde_json::json!({
        "portMappings": [
            {"hostPort": tcp_port, "containerPort": 8080, "protocol": "tcp", "hostIP": "127.0.0.1"},
            {"hostPort": udp_port, "containerPort": 53, "protocol": "udp"},
        ],
        "dns": {
            "servers": ["10.96.0.10", "10.96.0.11"],
            "searches": ["ns.svc.cluster.local", "svc.cluster.local"],
            "options": ["ndots:5", "edns0"],
        },
        "cgroupPath": cgroup.child("podrec"),
    });
    assert_eq!(add_in["runtimeConfig"], expected_runtime);

    // prevResult: what bridge/host-local (through portmap) produced, i.e. the pod's address.
    let pod_ip = st.network.unwrap().ip;
    let prev = &add_in["prevResult"];
    assert_eq!(prev["cniVersion"], "1.0.0", "{prev}");
    assert_eq!(
        prev["ips"][0]["address"],
        format!("{pod_ip}/24").as_str(),
        "{prev}"
    );
    assert!(
        prev["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == net.bridge.as_str()),
        "{prev}"
    );
    // The last plugin's result is the pod's result.
    assert_eq!(
        info["cniResult"]["dns"]["nameservers"],
        serde_json::json!(["10.96.0.99"]),
        "{info}"
    );
    // portmap (before us in the chain) got the same mappings: its DNAT rules name the ports.
    let (_, nat) = run("iptables", &["-t", "nat", "-S"]);
    assert!(nat.contains(&format!("--dport {tcp_port}")), "{nat}");

    // Stop: DEL with the same arguments, the cached result as prevResult.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let calls = std::fs::read_to_string(bin.path().join("calls")).unwrap();
    assert_eq!(calls.lines().collect::<Vec<_>>()[..2], ["ADD", "DEL"]);
    let del_env = read_json(&bin.path().join("DEL.env.json"));
    assert_eq!(del_env["CNI_COMMAND"], "DEL");
    for key in ["CNI_ARGS", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        assert_eq!(del_env[key], add_env[key], "{key}");
    }
    let del_in = read_json(&bin.path().join("DEL.stdin.json"));
    assert_eq!(del_in["runtimeConfig"], expected_runtime);
    assert_eq!(del_in["prevResult"]["ips"], prev["ips"]);
    assert_eq!(
        del_in["prevResult"]["dns"]["nameservers"][0], "10.96.0.99",
        "{del_in}"
    );
    assert!(net.ip_files().is_empty());
    assert_eq!(net.nat_rules(), 0, "portmap rules left");
    stop_and_remove(&mut rt, &id).await;

    // A pod without ports, DNS config or cgroup parent: no runtimeConfig at all.
    let bare = run_pod(&mut rt, pods::pod("bare")).await.unwrap();
    let add_in = read_json(&bin.path().join("ADD.stdin.json"));
    assert!(add_in.get("runtimeConfig").is_none(), "{add_in}");
    let add_env = read_json(&bin.path().join("ADD.env.json"));
    assert_eq!(add_env["CNI_CONTAINERID"], bare.as_str());
    assert!(cni_args(&add_env).contains(&("K8S_POD_NAME".to_string(), "bare".to_string())));
    stop_and_remove(&mut rt, &bare).await;
}

/// `(state, ppid, comm)` of every process whose parent is `parent`.
fn children_of(parent: u32) -> Vec<(char, u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head
            .split_once('(')
            .map(|(_, c)| c)
            .unwrap_or("")
            .to_string();
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent {
            out.push((state, pid, comm));
        }
    }
    out
}

#[tokio::test]
async fn infra_pid1_reaps_orphans_of_the_pod_pid_namespace() {
    let net = TestNetwork::new();
    let d = start(&net, Options::default()).await;
    let mut rt = d.runtime().await;
    let mut req = pods::pod("reaper");
    pods::namespaces(&mut req).pid = cri::NamespaceMode::Pod as i32;
    let id = run_pod(&mut rt, req).await.unwrap();
    let (_, info) = status(&mut rt, &id).await;
    let infra = info["infraPid"].as_u64().expect("infra pid") as u32;
    assert!(children_of(infra).is_empty(), "{:?}", children_of(infra));

    // Three orphans in the pod's PID namespace: each subshell exits at once, so its sleep is
    // reparented to the namespace's PID 1 (the infra process), which must reap it on exit.
    let out = Command::new("nsenter")
        .args(["--target", &infra.to_string(), "--pid", "sh", "-c"]) // nsenter forks for --pid
        // The sleeps must not hold our output pipes, or `output()` would wait for them.
        .arg("for i in 1 2 3; do (sleep 1 </dev/null >/dev/null 2>&1 &); done")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let adopted = children_of(infra);
    assert_eq!(
        adopted.iter().filter(|(_, _, c)| c == "sleep").count(),
        3,
        "orphans not reparented to the infra process: {adopted:?}"
    );

    // After they exit (1 s) and a grace period, no child of PID 1 is left, zombie or not.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = children_of(infra);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = children_of(infra);
    }
    assert!(left.is_empty(), "infra {infra} did not reap: {left:?}");
    // And it is still alive to reap the next ones.
    let stat = std::fs::read_to_string(format!("/proc/{infra}/stat")).unwrap();
    assert!(!stat.contains(") Z "), "{stat}");
    stop_and_remove(&mut rt, &id).await;
}

fn read_trim(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[tokio::test]
async fn pod_cgroup_parent_is_created_limited_and_removed() {
    let net = TestNetwork::new();
    let d = start(&net, Options::default()).await;
    let mut rt = d.runtime().await;
    let cgroup = TestCgroup::new("res");
    let pod_cgroup = cgroup.child("pod-cg");
    let hierarchies = TestCgroup::hierarchies();
    let names: Vec<String> = hierarchies
        .iter()
        .map(|h| h.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in ["memory", "cpu", "cpuset", "pids"] {
        assert!(names.iter().any(|n| n == wanted), "{names:?}");
    }
    // The top level already exists in the memory hierarchy: that one is not crius's to remove.
    let memory = Path::new(CGROUP_ROOT).join("memory");
    std::fs::create_dir(TestCgroup::dir(&memory, &cgroup.path)).unwrap();

    let mut req = pods::pod("limited");
    let linux = pods::linux(&mut req);
    linux.cgroup_parent = pod_cgroup.clone();
    linux.resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_shares: 512,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    });
    linux.overhead = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 16 << 20,
        cpu_shares: 100,
        cpu_quota: 10_000,
        ..Default::default()
    });
    let id = run_pod(&mut rt, req).await.unwrap();
    let (_, info) = status(&mut rt, &id).await;
    assert_eq!(info["cgroupParent"], pod_cgroup.as_str());

    // The cgroup exists in every hierarchy, limits = resources + overhead where the
    // controller lives.
    for h in &hierarchies {
        let dir = TestCgroup::dir(h, &pod_cgroup);
        assert!(dir.is_dir(), "{} missing", dir.display());
    }
    let mem_dir = TestCgroup::dir(&memory, &pod_cgroup);
    assert_eq!(
        read_trim(&mem_dir.join("memory.limit_in_bytes")),
        (80u64 << 20).to_string()
    );
    let cpu_dir = TestCgroup::dir(&Path::new(CGROUP_ROOT).join("cpu"), &pod_cgroup);
    assert_eq!(read_trim(&cpu_dir.join("cpu.shares")), "612");
    assert_eq!(read_trim(&cpu_dir.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read_trim(&cpu_dir.join("cpu.cfs_quota_us")), "60000");
    let cpuset_dir = TestCgroup::dir(&Path::new(CGROUP_ROOT).join("cpuset"), &pod_cgroup);
    assert!(
        !read_trim(&cpuset_dir.join("cpuset.cpus")).is_empty(),
        "cpuset not initialised from its parent"
    );

    // Stop keeps the cgroup (containers may still be cleaned up into it); Remove takes away
    // exactly what crius created.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(mem_dir.is_dir());
    stop_and_remove(&mut rt, &id).await;
    for h in &hierarchies {
        let dir = TestCgroup::dir(h, &pod_cgroup);
        assert!(!dir.exists(), "{} left", dir.display());
        let top = TestCgroup::dir(h, &cgroup.path);
        if h == &memory {
            assert!(top.is_dir(), "pre-existing {} removed", top.display());
        } else {
            assert!(!top.exists(), "{} left", top.display());
        }
    }
}

#[tokio::test]
async fn status_returns_labels_annotations_and_every_ip_and_list_selects_by_labels() {
    let net = TestNetwork::dual_stack();
    let d = start(&net, Options::default()).await;
    let mut rt = d.runtime().await;

    let labels = |app: &str, tier: &str| -> std::collections::HashMap<String, String> {
        [
            ("app".to_string(), app.to_string()),
            ("tier".to_string(), tier.to_string()),
            ("io.kubernetes.pod.namespace".to_string(), "e2e".to_string()),
        ]
        .into()
    };
    let annotations: std::collections::HashMap<String, String> = [
        ("kubernetes.io/config.source".to_string(), "api".to_string()),
        (
            "example.com/json".to_string(),
            r#"{"a": [1, 2], "b": "x;y=z"}"#.to_string(),
        ),
        ("empty".to_string(), String::new()),
    ]
    .into();
    let mut a = pods::pod("front");
    pods::config(&mut a).labels = labels("shop", "web");
    pods::config(&mut a).annotations = annotations.clone();
    let mut b = pods::pod("back");
    pods::config(&mut b).labels = labels("shop", "db");
    let mut c = pods::pod("other");
    pods::config(&mut c).labels = labels("blog", "web");
    let a_id = run_pod(&mut rt, a).await.unwrap();
    let b_id = run_pod(&mut rt, b).await.unwrap();
    let c_id = run_pod(&mut rt, c).await.unwrap();

    let (st, info) = status(&mut rt, &a_id).await;
    assert_eq!(st.labels, labels("shop", "web"));
    assert_eq!(st.annotations, annotations);
    // Dual stack: the IPv4 address first, the IPv6 one as an additional IP, both from host-local.
    let network = st.network.unwrap();
    let v6_net: std::net::Ipv6Addr = net
        .ipv6_subnet
        .as_deref()
        .unwrap()
        .trim_end_matches("/64")
        .parse()
        .unwrap();
    assert!(
        network.ip.starts_with(&format!("{}.", net.prefix)),
        "{network:?}"
    );
    let extra: Vec<&str> = network
        .additional_ips
        .iter()
        .map(|p| p.ip.as_str())
        .collect();
    assert_eq!(extra.len(), 1, "{network:?} {info}");
    let v6: std::net::Ipv6Addr = extra[0].parse().unwrap();
    assert_eq!(v6.segments()[..4], v6_net.segments()[..4], "{extra:?}");
    let held = net.ip_files();
    assert!(
        held.contains(&network.ip) && held.contains(&extra[0].to_string()),
        "{held:?}"
    );
    // ListPodSandbox carries the same labels and annotations.
    let listed = pods::list_all(&mut rt).await;
    let a_item = listed.iter().find(|p| p.id == a_id).unwrap();
    assert_eq!(a_item.labels, labels("shop", "web"));
    assert_eq!(a_item.annotations, annotations);

    // Label selectors: every pair must match; a missing key or another value excludes the pod.
    let select = |pairs: &[(&str, &str)]| cri::ListPodSandboxRequest {
        filter: Some(cri::PodSandboxFilter {
            label_selector: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    };
    type Selector<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Selector, Vec<&String>)> = vec![
        (vec![("app", "shop")], vec![&a_id, &b_id]),
        (vec![("tier", "web")], vec![&a_id, &c_id]),
        (vec![("app", "shop"), ("tier", "web")], vec![&a_id]),
        (vec![("app", "shop"), ("tier", "cache")], vec![]),
        (vec![("app", "shop"), ("missing", "")], vec![]),
        (
            vec![("io.kubernetes.pod.namespace", "e2e")],
            vec![&a_id, &b_id, &c_id],
        ),
    ];
    for (pairs, want) in cases {
        let mut got: Vec<String> = rt
            .list_pod_sandbox(select(&pairs))
            .await
            .unwrap()
            .into_inner()
            .items
            .into_iter()
            .map(|p| p.id)
            .collect();
        got.sort();
        let mut want: Vec<String> = want.into_iter().cloned().collect();
        want.sort();
        assert_eq!(got, want, "selector {pairs:?}");
    }
    // Combined with the state filter.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: b_id.clone(),
    })
    .await
    .unwrap();
    let ready_shop = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: [("app".to_string(), "shop".to_string())].into(),
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        ready_shop.iter().map(|p| &p.id).collect::<Vec<_>>(),
        vec![&a_id]
    );
    for id in [&a_id, &b_id, &c_id] {
        stop_and_remove(&mut rt, id).await;
    }
    assert!(net.ip_files().is_empty(), "{:?}", net.ip_files());
}
