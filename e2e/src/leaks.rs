//! What a daemon instance may have left on the host once every pod and container is removed:
//! the checks the fault, chaos and churn tests end with.

use std::path::Path;

use crate::cgroups::TestCgroup;
use crate::daemon::Daemon;
use crate::network::TestNetwork;
use crate::sweep;

/// Everything that is still there: IPs, veths, monitors, mounts, records, runtime state, and
/// (with `cgroup`) cgroup directories under the test's cgroup parent. Empty when clean.
pub fn leftovers(d: &Daemon, net: &TestNetwork, cgroup: Option<&TestCgroup>) -> Vec<String> {
    let mut out = Vec::new();
    let ips = net.ip_files();
    if !ips.is_empty() {
        out.push(format!("IPs allocated: {ips:?}"));
    }
    if net.veths() > 0 {
        out.push(format!("{} veths on the bridge", net.veths()));
    }
    let monitors = sweep::monitors(&d.paths.runroot);
    if !monitors.is_empty() {
        out.push(format!(
            "monitors running: {:?}",
            monitors
                .iter()
                .map(|p| p.args.join(" "))
                .collect::<Vec<_>>()
        ));
    }
    for dir in [&d.paths.runroot, &d.paths.root] {
        let mounts = sweep::mount_points_under(dir);
        if !mounts.is_empty() {
            out.push(format!("mounts: {mounts:?}"));
        }
    }
    for kind in ["sandbox", "container"] {
        let left = names(&d.paths.root.join(kind));
        if !left.is_empty() {
            out.push(format!("{kind} records: {left:?}"));
        }
    }
    for handler in ["runc", "crun"] {
        let left = names(&d.paths.runroot.join("runtimes").join(handler));
        if !left.is_empty() {
            out.push(format!("{handler} containers: {left:?}"));
        }
    }
    for dir in ["pods", "containers", "m"] {
        let left = names(&d.paths.runroot.join(dir));
        if !left.is_empty() {
            out.push(format!("runroot/{dir}: {left:?}"));
        }
    }
    if let Some(cg) = cgroup {
        for h in TestCgroup::hierarchies() {
            let dir = TestCgroup::dir(&h, &cg.path);
            let subdirs: Vec<String> = std::fs::read_dir(&dir)
                .map(|e| {
                    e.flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path().display().to_string())
                        .collect()
                })
                .unwrap_or_default();
            if !subdirs.is_empty() {
                out.push(format!("cgroups: {subdirs:?}"));
            }
        }
    }
    out
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Where what the daemon reports disagrees with the node: a Running container whose pid is
/// gone or that the runtime does not call running, a Created one the runtime does not call
/// created, an Exited one that runs, a Ready pod without its network namespace. Empty when
/// every status is true.
pub async fn truth_violations(d: &Daemon) -> Vec<String> {
    use k8s_cri::v1 as cri;
    let mut out = Vec::new();
    let mut rt = d.runtime().await;
    let containers = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .map(|r| r.into_inner().containers)
        .unwrap_or_default();
    for c in containers {
        let Ok(resp) = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: true,
            })
            .await
        else {
            continue; // removed meanwhile
        };
        let resp = resp.into_inner();
        let Some(st) = resp.status else { continue };
        let info: serde_json::Value = resp
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        let handler = info["runtimeHandler"]
            .as_str()
            .unwrap_or("runc")
            .to_string();
        let pid = info["pid"].as_u64().unwrap_or(0) as u32;
        let runtime = runtime_status(&d.paths.runroot, &handler, &c.id);
        let id = &c.id[..12];
        match cri::ContainerState::try_from(st.state) {
            Ok(cri::ContainerState::ContainerRunning) => {
                if !sweep::alive(pid) {
                    out.push(format!("{id} is Running but its pid {pid} is gone"));
                }
                if runtime.as_deref() != Some("running") {
                    out.push(format!("{id} is Running, the runtime says {runtime:?}"));
                }
            }
            Ok(cri::ContainerState::ContainerCreated) => {
                if runtime.as_deref() != Some("created") {
                    out.push(format!("{id} is Created, the runtime says {runtime:?}"));
                }
            }
            Ok(cri::ContainerState::ContainerExited) => {
                if sweep::alive(pid) && runtime.as_deref() == Some("running") {
                    out.push(format!("{id} is Exited but runs (pid {pid})"));
                }
            }
            _ => out.push(format!("{id} is in state {}", st.state)),
        }
    }
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .map(|r| r.into_inner().items)
        .unwrap_or_default();
    for p in pods {
        if p.state != cri::PodSandboxState::SandboxReady as i32 {
            continue;
        }
        let Ok(resp) = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: p.id.clone(),
                verbose: true,
            })
            .await
        else {
            continue;
        };
        let info: serde_json::Value = resp
            .into_inner()
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        let pin = Path::new(info["runDir"].as_str().unwrap_or("/nonexistent")).join("ns/net");
        if !is_netns(&pin) {
            out.push(format!("pod {} is Ready without its netns", &p.id[..12]));
        }
    }
    out
}

/// `<handler> state <id>`'s status, under the instance's runtime root.
pub fn runtime_status(runroot: &Path, handler: &str, id: &str) -> Option<String> {
    let out = std::process::Command::new(handler)
        .arg("--root")
        .arg(runroot.join("runtimes").join(handler))
        .arg("state")
        .arg(id)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["status"].as_str().map(str::to_string)
}

fn is_netns(path: &Path) -> bool {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "nsfs")
        .unwrap_or(false)
}
