//! The CNI exec protocol against fake plugins (sh scripts recording their stdin/env) and against
//! the real bridge/host-local/portmap/loopback plugins (root only).

#![allow(clippy::unwrap_used)] // Tests fail by panicking.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use crius_cni::{
    create_pinned, Attachment, Cni, CniError, CniErrorKind, NetworkConfigList, NsKind,
};
use serde_json::{json, Map, Value};

const SYSTEM_PLUGINS: &str = "/usr/lib/cni";

/// One fake plugin, symlinked per test under names `<mode>-<x>`: mode `ok` prints a result,
/// `fail` prints a CNI error and exits 1, `crash` exits 2 with stderr text, `sleep` hangs on ADD.
/// Every call records `<rec>/<name>.<CMD>.json` (stdin), `.env` (CNI_* vars) and a `log` line.
const FAKE_PLUGIN: &str = r#"#!/bin/sh
base=$(basename "$0")
mode=${base%%-*}
rec="$(dirname "$0")/../rec"
mkdir -p "$rec"
conf=$(cat)
printf '%s' "$conf" > "$rec/$base.$CNI_COMMAND.json"
env | grep '^CNI_' | sort > "$rec/$base.$CNI_COMMAND.env"
echo "$base $CNI_COMMAND" >> "$rec/log"
[ "$CNI_COMMAND" = ADD ] || exit 0
case "$mode" in
ok) printf '{"cniVersion":"1.0.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"address":"10.0.0.%s/24","interface":0}]}' "$CNI_IFNAME" "$CNI_NETNS" "${#base}" ;;
fail) printf '{"cniVersion":"1.0.0","code":11,"msg":"boom","details":"from %s"}' "$base"; exit 1 ;;
crash) echo "panic: something broke" >&2; exit 2 ;;
sleep) exec sleep 30 ;;
esac
"#;

/// The fake plugin script, written once per process (then only symlinked, so no test ever
/// executes a file another thread may still hold open for writing).
fn fake_script() -> &'static Path {
    static SCRIPT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &SCRIPT
        .get_or_init(|| {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("fake");
            std::fs::write(&path, FAKE_PLUGIN).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            (dir, path)
        })
        .1
}

struct Fakes {
    tmp: tempfile::TempDir,
}

impl Fakes {
    fn new(names: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("bin")).unwrap();
        for name in names {
            std::os::unix::fs::symlink(fake_script(), tmp.path().join("bin").join(name)).unwrap();
        }
        Fakes { tmp }
    }
    fn bin(&self) -> PathBuf {
        self.tmp.path().join("bin")
    }
    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }
    fn cni(&self) -> Cni {
        Cni::new(
            vec![self.bin(), PathBuf::from(SYSTEM_PLUGINS)],
            self.cache(),
        )
    }
    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.tmp.path().join("rec/log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    fn stdin(&self, plugin: &str, cmd: &str) -> Value {
        let p = self.tmp.path().join(format!("rec/{plugin}.{cmd}.json"));
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    }
    fn env(&self, plugin: &str, cmd: &str) -> Vec<String> {
        let p = self.tmp.path().join(format!("rec/{plugin}.{cmd}.env"));
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn list(version: &str, name: &str, plugins: Value) -> NetworkConfigList {
    let bytes =
        serde_json::to_vec(&json!({"cniVersion": version, "name": name, "plugins": plugins}))
            .unwrap();
    NetworkConfigList::parse(Path::new("test.conflist"), &bytes).unwrap()
}

fn caps(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn pod_args() -> Vec<(String, String)> {
    vec![
        ("K8S_POD_NAMESPACE".into(), "default".into()),
        ("K8S_POD_NAME".into(), "web".into()),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), "c1".into()),
        ("K8S_POD_UID".into(), "u-1".into()),
    ]
}

#[test]
fn fake_chain_gets_prev_result_filtered_runtime_config_and_env() {
    let f = Fakes::new(&["ok-a", "ok-bb"]);
    let cni = f.cni();
    let net = list(
        "1.0.0",
        "fakes",
        json!([
            {"type": "ok-a", "capabilities": {"portMappings": true}, "extra": 1},
            {"type": "ok-bb", "capabilities": {"dns": true, "portMappings": false}}
        ]),
    );
    let att = Attachment {
        container_id: "c1",
        netns: Path::new("/var/run/netns/none"),
        ifname: "eth0",
        args: pod_args(),
        capabilities: caps(json!({
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "dns": {"servers": ["10.0.0.10"]},
            "cgroupPath": "/kubepods/x"
        })),
    };
    let result = cni.add(&net, &att).unwrap();
    // The last plugin's result wins.
    assert_eq!(
        result.pod_ips(),
        vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(f.log(), vec!["ok-a ADD", "ok-bb ADD"]);

    let a = f.stdin("ok-a", "ADD");
    assert_eq!(a["name"], "fakes");
    assert_eq!(a["cniVersion"], "1.0.0");
    assert_eq!(a["extra"], 1);
    assert!(a.get("prevResult").is_none());
    assert_eq!(
        a["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
    let b = f.stdin("ok-bb", "ADD");
    assert_eq!(b["prevResult"]["ips"][0]["address"], "10.0.0.4/24");
    assert_eq!(
        b["runtimeConfig"],
        json!({"dns": {"servers": ["10.0.0.10"]}})
    );

    let env = f.env("ok-a", "ADD");
    let cni_path = format!("CNI_PATH={}:{SYSTEM_PLUGINS}", f.bin().display());
    for want in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=c1",
        "CNI_NETNS=/var/run/netns/none",
        "CNI_IFNAME=eth0",
        "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u-1",
        cni_path.as_str(),
    ] {
        assert!(env.iter().any(|l| l == want), "missing {want} in {env:?}");
    }

    assert_eq!(cni.cached_result("fakes", "c1", "eth0").unwrap(), result);

    // CHECK: in order, with the cached result.
    cni.check(&net, &att).unwrap();
    assert_eq!(f.stdin("ok-a", "CHECK")["prevResult"], result.raw);

    // DEL: reverse order, cached result as prevResult, cache entry dropped; twice is fine.
    cni.del(Some(&net), &att).unwrap();
    assert_eq!(&f.log()[4..], ["ok-bb DEL", "ok-a DEL"]);
    assert_eq!(f.stdin("ok-a", "DEL")["prevResult"], result.raw);
    assert_eq!(
        f.stdin("ok-a", "DEL")["runtimeConfig"]["portMappings"][0]["hostPort"],
        8080
    );
    assert!(cni.cached_result("fakes", "c1", "eth0").is_none());
    cni.del(Some(&net), &att).unwrap();
    assert_eq!(f.log().len(), 8, "{:?}", f.log());
    // No config and nothing cached: nothing to run.
    cni.del(None, &att).unwrap();
    assert_eq!(f.log().len(), 8);

    // CHECK without a cached result is a not-found error.
    let err = cni.check(&net, &att).unwrap_err();
    assert_eq!(err.kind(), CniErrorKind::NotFound, "{err}");
}

#[test]
fn del_uses_cached_config_args_and_capabilities_after_conf_changed() {
    let f = Fakes::new(&["ok-a", "ok-bb", "ok-ccc"]);
    let cni = f.cni();
    let net = list(
        "1.0.0",
        "n1",
        json!([{"type": "ok-a", "capabilities": {"portMappings": true}}, {"type": "ok-bb"}]),
    );
    let att = Attachment {
        container_id: "c2",
        netns: Path::new("/gone"),
        ifname: "eth0",
        args: pod_args(),
        capabilities: caps(json!({"portMappings": [{"hostPort": 1}]})),
    };
    cni.add(&net, &att).unwrap();
    // The conf file now says something else, and the restarted daemon lost the pod's args.
    let changed = list("1.0.0", "n1", json!([{"type": "ok-ccc"}]));
    let bare = Attachment {
        args: vec![],
        capabilities: Map::new(),
        ..att.clone()
    };
    cni.del(Some(&changed), &bare).unwrap();
    assert_eq!(&f.log()[2..], ["ok-bb DEL", "ok-a DEL"]);
    assert!(f
        .env("ok-a", "DEL")
        .iter()
        .any(|l| l.contains("K8S_POD_NAME=web")));
    assert_eq!(
        f.stdin("ok-a", "DEL")["runtimeConfig"]["portMappings"][0]["hostPort"],
        1
    );

    // And with no config at all, from the cache alone.
    cni.add(&net, &att).unwrap();
    cni.del(None, &bare).unwrap();
    assert_eq!(&f.log()[6..], ["ok-bb DEL", "ok-a DEL"]);
    assert!(cni.cached_result("n1", "c2", "eth0").is_none());
}

#[test]
fn failing_second_plugin_undoes_the_first_and_reports_its_message() {
    let f = Fakes::new(&["ok-a", "fail-b"]);
    let cni = f.cni();
    let net = list("1.0.0", "n", json!([{"type": "ok-a"}, {"type": "fail-b"}]));
    let att = Attachment {
        container_id: "c3",
        netns: Path::new("/x"),
        ifname: "eth0",
        args: vec![],
        capabilities: Map::new(),
    };
    let err = cni.add(&net, &att).unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin fail-b failed (code 11): boom: from fail-b"
    );
    assert!(
        matches!(&err, CniError::Plugin { plugin, code: 11, command: "ADD", .. } if plugin == "fail-b")
    );
    assert_eq!(
        f.log(),
        vec!["ok-a ADD", "fail-b ADD", "fail-b DEL", "ok-a DEL"]
    );
    // The undo carries what was set up so far.
    assert_eq!(
        f.stdin("ok-a", "DEL")["prevResult"]["ips"][0]["address"],
        "10.0.0.4/24"
    );
    assert!(cni.cached_result("n", "c3", "eth0").is_none());
    assert_eq!(
        std::fs::read_dir(f.cache().join("results"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn corrupt_cache_entry_does_not_block_del_with_a_config() {
    let f = Fakes::new(&["ok-a"]);
    let cni = f.cni();
    let net = list("1.0.0", "n", json!([{"type": "ok-a"}]));
    let att = Attachment {
        container_id: "c8",
        netns: Path::new("/x"),
        ifname: "eth0",
        args: vec![],
        capabilities: Map::new(),
    };
    cni.add(&net, &att).unwrap();
    let entry = f.cache().join("results/n-c8-eth0");
    std::fs::write(&entry, "{truncated").unwrap();
    assert!(cni.cached_result("n", "c8", "eth0").is_none());
    cni.del(None, &att).unwrap();
    assert!(entry.exists(), "a DEL without config cannot use it");
    cni.del(Some(&net), &att).unwrap();
    assert!(!entry.exists());
    assert_eq!(f.log(), vec!["ok-a ADD", "ok-a DEL"]);
}

#[test]
fn crash_without_cni_error_shows_stderr() {
    let f = Fakes::new(&["crash-a"]);
    let net = list("0.4.0", "n", json!([{"type": "crash-a"}]));
    let att = Attachment {
        container_id: "c4",
        netns: Path::new("/x"),
        ifname: "eth0",
        args: vec![],
        capabilities: Map::new(),
    };
    let err = f.cni().add(&net, &att).unwrap_err().to_string();
    assert!(
        err.contains("crash-a") && err.contains("panic: something broke"),
        "{err}"
    );
}

#[test]
fn missing_plugin_is_named_with_the_dirs_searched() {
    let f = Fakes::new(&[]);
    let net = list("1.0.0", "n", json!([{"type": "no-such-plugin-xyz"}]));
    let att = Attachment {
        container_id: "c5",
        netns: Path::new("/x"),
        ifname: "eth0",
        args: vec![],
        capabilities: Map::new(),
    };
    let err = f.cni().add(&net, &att).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no-such-plugin-xyz"), "{msg}");
    assert!(
        msg.contains(&f.bin().display().to_string()) && msg.contains(SYSTEM_PLUGINS),
        "{msg}"
    );
    assert_eq!(err.kind(), CniErrorKind::FailedPrecondition);
}

#[test]
fn hung_plugin_is_killed_at_the_timeout() {
    let f = Fakes::new(&["sleep-a"]);
    let cni = f.cni().with_timeout(Duration::from_millis(500));
    let net = list("1.0.0", "n", json!([{"type": "sleep-a"}]));
    let att = Attachment {
        container_id: "c6",
        netns: Path::new("/x"),
        ifname: "eth0",
        args: vec![],
        capabilities: Map::new(),
    };
    let start = std::time::Instant::now();
    let err = cni.add(&net, &att).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(err.kind(), CniErrorKind::DeadlineExceeded, "{err}");
    assert!(err.to_string().contains("sleep-a"), "{err}");
    // The undo still ran (DEL does not hang).
    assert_eq!(f.log(), vec!["sleep-a ADD", "sleep-a DEL"]);
}

#[test]
fn old_versions_skip_check_and_del_gets_no_prev_result() {
    let f = Fakes::new(&["ok-a"]);
    let cni = f.cni();
    let net = list("0.3.1", "old", json!([{"type": "ok-a"}]));
    let att = Attachment {
        container_id: "c7",
        netns: Path::new("/x"),
        ifname: "eth0",
        args: vec![],
        capabilities: Map::new(),
    };
    cni.add(&net, &att).unwrap();
    cni.check(&net, &att).unwrap();
    cni.del(Some(&net), &att).unwrap();
    assert_eq!(f.log(), vec!["ok-a ADD", "ok-a DEL"]);
    assert!(f.stdin("ok-a", "DEL").get("prevResult").is_none());
}

// ---- real plugins (root) ----

struct RealNet {
    n: u32,
    bridge: String,
    subnet: String,
    tmp: tempfile::TempDir,
}

impl RealNet {
    fn new() -> Self {
        let n = unique();
        RealNet {
            n,
            bridge: bridge_name(n),
            subnet: format!("10.199.{}", subnet_octet(n)),
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn ipam_dir(&self) -> PathBuf {
        self.tmp.path().join("ipam")
    }
    fn bridge_plugin(&self) -> Value {
        json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("{}.0/24", self.subnet)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.ipam_dir(),
            }
        })
    }
    fn name(&self) -> String {
        format!("crt-{}-{}", std::process::id(), self.n)
    }
    fn container_id(&self, i: u32) -> String {
        format!("{:x}c{}i{}", std::process::id(), self.n, i)
    }
    /// Whether host-local's data dir still records `container_id`.
    fn ipam_holds(&self, container_id: &str) -> bool {
        let dir = self.ipam_dir().join(self.name());
        std::fs::read_dir(dir)
            .map(|entries| {
                entries.flatten().any(|e| {
                    std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains(container_id))
                })
            })
            .unwrap_or(false)
    }
    fn veths_on_bridge(&self) -> usize {
        let (_, out) = run("ip", &["-o", "link", "show", "master", &self.bridge]);
        out.lines().filter(|l| !l.trim().is_empty()).count()
    }
}

fn can_connect(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok()
}

#[test]
fn bridge_host_local_portmap_loopback_end_to_end() {
    if !is_root() {
        return;
    }
    let rn = RealNet::new();
    let cid = rn.container_id(0);
    let _net_guard = NetGuard {
        bridge: rn.bridge.clone(),
        container_ids: vec![cid.clone()],
    };
    let ns_dir = rn.tmp.path().join("ns");
    let _ns_guard = NsGuard(ns_dir.clone());
    let pinned = create_pinned(&[NsKind::Net], &ns_dir, None).unwrap();
    let netns = pinned.net().unwrap();
    let cni = Cni::new(
        vec![PathBuf::from(SYSTEM_PLUGINS)],
        rn.tmp.path().join("cache"),
    );
    let host_port: u16 = 20000 + (std::process::id() % 20000) as u16;
    let net = list(
        "1.0.0",
        &rn.name(),
        json!([
            rn.bridge_plugin(),
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]),
    );
    let att = Attachment {
        container_id: &cid,
        netns: &netns,
        ifname: "eth0",
        args: pod_args(),
        capabilities: caps(json!({
            "portMappings": [{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp", "hostIP": ""}]
        })),
    };

    let result = cni.add(&net, &att).unwrap();
    let ips = result.pod_ips();
    assert_eq!(ips.len(), 1, "{result:?}");
    let pod_ip = ips[0];
    assert!(
        pod_ip.to_string().starts_with(&format!("{}.", rn.subnet)),
        "{pod_ip}"
    );
    assert_eq!(
        crius_cni::interface_addrs(&netns, "eth0").unwrap()[0],
        pod_ip
    );
    let lo = must(
        "nsenter",
        &[
            &format!("--net={}", netns.display()),
            "ip",
            "-o",
            "link",
            "show",
            "lo",
        ],
    );
    assert!(lo.contains("UP"), "loopback plugin in the chain: {lo}");
    let route = must("ip", &["route", "get", &pod_ip.to_string()]);
    assert!(route.contains(&format!("dev {}", rn.bridge)), "{route}");
    assert_eq!(rn.veths_on_bridge(), 1);
    assert!(rn.ipam_holds(&cid));

    // Traffic host -> pod works, directly and through the host port.
    let listener = crius_cni::in_netns(&netns, || TcpListener::bind("0.0.0.0:8080"))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = s.write_all(b"hi");
            }
        }
    });
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::new(pod_ip, 8080), Duration::from_secs(3)).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "hi");

    // portMappings reached portmap.
    let rules = nat_rules_mentioning(&cid);
    assert!(
        !rules.is_empty() && rules.iter().any(|r| r.contains(&host_port.to_string())),
        "{rules:?}"
    );
    let gw = result.ips[0].gateway.unwrap();
    assert!(
        can_connect(SocketAddr::new(gw, host_port)),
        "host port {host_port} via {gw}"
    );
    drop(server);

    // CHECK of the whole list: portmap <= 1.2 (Debian 12 ships 1.1.1) wrongly looks for an IPv6
    // chain on IPv4-only pods (containernetworking/plugins#819), so only that failure is allowed.
    if let Err(e) = cni.check(&net, &att) {
        assert!(
            matches!(&e, CniError::Plugin { plugin, msg, .. } if plugin == "portmap" && msg.contains("ipv6")),
            "{e}"
        );
    }
    let without_portmap = list(
        "1.0.0",
        &rn.name(),
        json!([rn.bridge_plugin(), {"type": "loopback"}]),
    );
    cni.check(&without_portmap, &att).unwrap();
    assert_eq!(
        cni.cached_result(&net.name, &cid, "eth0")
            .unwrap()
            .pod_ips(),
        ips
    );

    cni.del(Some(&net), &att).unwrap();
    assert!(
        nat_rules_mentioning(&cid).is_empty(),
        "{:?}",
        nat_rules_mentioning(&cid)
    );
    assert!(!rn.ipam_holds(&cid));
    assert_eq!(rn.veths_on_bridge(), 0);
    assert!(cni.cached_result(&net.name, &cid, "eth0").is_none());
    cni.del(Some(&net), &att).unwrap();

    // Again, then DEL after the netns is gone, from the cache alone.
    let again = cni.add(&net, &att).unwrap();
    assert_eq!(again.pod_ips().len(), 1);
    assert!(rn.ipam_holds(&cid));
    pinned.remove().unwrap();
    assert!(!netns.exists());
    cni.del(None, &att).unwrap();
    assert!(!rn.ipam_holds(&cid));
    assert!(nat_rules_mentioning(&cid).is_empty());
    cni.del(Some(&net), &att).unwrap();
}

#[test]
fn failing_plugin_after_bridge_undoes_the_veth_and_the_ip() {
    if !is_root() {
        return;
    }
    let rn = RealNet::new();
    let cid = rn.container_id(1);
    let _net_guard = NetGuard {
        bridge: rn.bridge.clone(),
        container_ids: vec![cid.clone()],
    };
    let ns_dir = rn.tmp.path().join("ns");
    let _ns_guard = NsGuard(ns_dir.clone());
    let pinned = create_pinned(&[NsKind::Net], &ns_dir, None).unwrap();
    let netns = pinned.net().unwrap();
    let f = Fakes::new(&["fail-b"]);
    let cni = Cni::new(
        vec![f.bin(), PathBuf::from(SYSTEM_PLUGINS)],
        rn.tmp.path().join("cache"),
    );
    let net = list(
        "1.0.0",
        &rn.name(),
        json!([rn.bridge_plugin(), {"type": "fail-b"}]),
    );
    let att = Attachment {
        container_id: &cid,
        netns: &netns,
        ifname: "eth0",
        args: pod_args(),
        capabilities: Map::new(),
    };
    let err = cni.add(&net, &att).unwrap_err();
    assert!(
        err.to_string()
            .contains("plugin fail-b failed (code 11): boom"),
        "{err}"
    );
    // fail-b saw the bridge's result as prevResult.
    assert!(f.stdin("fail-b", "ADD")["prevResult"]["ips"][0]["address"].is_string());
    assert_eq!(rn.veths_on_bridge(), 0);
    assert!(!rn.ipam_holds(&cid));
    assert!(crius_cni::interface_addrs(&netns, "eth0")
        .unwrap()
        .is_empty());
    assert!(cni.cached_result(&net.name, &cid, "eth0").is_none());
}

#[test]
fn host_local_with_invalid_subnet_fails_and_leaves_no_veth() {
    if !is_root() {
        return;
    }
    let rn = RealNet::new();
    let cid = rn.container_id(2);
    let _net_guard = NetGuard {
        bridge: rn.bridge.clone(),
        container_ids: vec![cid.clone()],
    };
    let ns_dir = rn.tmp.path().join("ns");
    let _ns_guard = NsGuard(ns_dir.clone());
    let pinned = create_pinned(&[NsKind::Net], &ns_dir, None).unwrap();
    let netns = pinned.net().unwrap();
    let cni = Cni::new(
        vec![PathBuf::from(SYSTEM_PLUGINS)],
        rn.tmp.path().join("cache"),
    );
    let mut bridge = rn.bridge_plugin();
    bridge["ipam"]["ranges"] = json!([[{"subnet": "10.199.300.0/24"}]]);
    let net = list("1.0.0", &rn.name(), json!([bridge]));
    let att = Attachment {
        container_id: &cid,
        netns: &netns,
        ifname: "eth0",
        args: vec![],
        capabilities: Map::new(),
    };
    let err = cni.add(&net, &att).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("plugin bridge failed") && msg.contains("10.199.300.0"),
        "{msg}"
    );
    assert_eq!(rn.veths_on_bridge(), 0);
}
