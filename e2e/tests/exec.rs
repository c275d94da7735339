//! Exec and ExecSync. They run with the container's own identity, under runc and crun alike: the
//! uid/gid/groups, capability sets, no_new_privs, seccomp mode, environment and cwd an exec sees
//! equal those of the container's own process, for root, `run_as_user`, `run_as_username`,
//! supplemental groups (Merge and Strict) and a user-namespace pod (issue 17: under crun every
//! exec ran as root with the default capabilities).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crius_e2e::busybox::BusyboxDaemon;
use crius_e2e::daemon::Options;
use crius_e2e::pods;
use k8s_cri::v1 as cri;

mod remote;
use remote::{read_all, session, status_of};

/// What the container's command and every exec print about themselves.
const IDENTITY: &str = "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
     cat /proc/self/environ | tr '\\0' '\\n' | sort; echo cwd=$(pwd)";

struct Case {
    name: &'static str,
    sc: cri::LinuxContainerSecurityContext,
    working_dir: &'static str,
    /// Lines the identity must contain (so that two equally wrong answers cannot pass).
    expect: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let base = || cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        }),
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        ..Default::default()
    };
    vec![
        Case {
            name: "root",
            sc: base(),
            working_dir: "",
            expect: &["Uid:\t0\t0\t0\t0", "Seccomp:\t2", "HOME=/root", "cwd=/"],
        },
        Case {
            name: "uid",
            sc: cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1001 }),
                no_new_privs: true,
                ..base()
            },
            working_dir: "/tmp",
            expect: &[
                "Uid:\t1001\t1001\t1001\t1001",
                "CapEff:\t0000000000000000",
                "NoNewPrivs:\t1",
                "cwd=/tmp",
            ],
        },
        Case {
            name: "username",
            sc: cri::LinuxContainerSecurityContext {
                run_as_username: "app".into(),
                ..base()
            },
            working_dir: "",
            expect: &[
                "Uid:\t1000\t1000\t1000\t1000",
                "Gid:\t1000\t1000\t1000\t1000",
                "HOME=/tmp",
                "CapEff:\t0000000000000000",
            ],
        },
        Case {
            name: "merge",
            sc: cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                run_as_group: Some(cri::Int64Value { value: 1000 }),
                supplemental_groups: vec![2000, 3000],
                supplemental_groups_policy: cri::SupplementalGroupsPolicy::Merge as i32,
                ..base()
            },
            working_dir: "",
            expect: &["Uid:\t1000\t1000\t1000\t1000", "2000 3000"],
        },
        Case {
            name: "strict",
            sc: cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                run_as_group: Some(cri::Int64Value { value: 1000 }),
                supplemental_groups: vec![4000],
                supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
                ..base()
            },
            working_dir: "",
            expect: &["Uid:\t1000\t1000\t1000\t1000", "4000"],
        },
    ]
}

struct Env {
    b: BusyboxDaemon,
    logs: tempfile::TempDir,
}

impl Env {
    async fn pod(
        &self,
        name: &str,
        handler: &str,
        userns: Option<u32>,
    ) -> (String, cri::PodSandboxConfig) {
        let mut req = pods::pod(name);
        req.runtime_handler = handler.into();
        pods::config(&mut req).log_directory = self.logs.path().join(name).display().to_string();
        if let Some(base) = userns {
            let map = cri::IdMapping {
                host_id: base,
                container_id: 0,
                length: 65536,
            };
            pods::namespaces(&mut req).userns_options = Some(cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                uids: vec![map],
                gids: vec![map],
            });
        }
        let config = req.config.clone().unwrap();
        let id = self
            .b
            .d
            .runtime()
            .await
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    /// Runs a container that records its identity in /tmp/ident, then sleeps.
    async fn run(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        name: &str,
        sc: cri::LinuxContainerSecurityContext,
        working_dir: &str,
    ) -> String {
        let script = format!(
            "({IDENTITY}) > /tmp/ident.tmp && mv /tmp/ident.tmp /tmp/ident; exec sleep 1000"
        );
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.b.image.clone(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script],
            envs: vec![cri::KeyValue {
                key: "IDENTITY_CASE".into(),
                value: name.into(),
            }],
            working_dir: working_dir.into(),
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(sc),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut rt = self.b.d.runtime().await;
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.0.clone(),
                config: Some(config),
                sandbox_config: Some(pod.1.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e:?}"))
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e:?}"));
        id
    }

    async fn exec_sync(&self, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        self.b
            .d
            .runtime()
            .await
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// The identity the container's own process recorded.
    async fn recorded(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.exec_sync(id, &["cat", "/tmp/ident"]).await;
            if r.exit_code == 0 {
                return String::from_utf8(r.stdout).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "container {id} never recorded its identity"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The identity a streaming exec sees.
    async fn streamed(&self, id: &str) -> String {
        let url = self
            .b
            .d
            .runtime()
            .await
            .exec(cri::ExecRequest {
                container_id: id.into(),
                cmd: vec!["sh".into(), "-c".into(), IDENTITY.into()],
                tty: false,
                stdin: false,
                stdout: true,
                stderr: true,
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let mut s = session(&url, false, true, false).await;
        let (out, err, status) = tokio::join!(
            read_all(s.stdout),
            read_all(s.stderr.take().unwrap()),
            read_all(s.error)
        );
        assert_eq!(err, "", "streaming exec in {id}");
        assert_eq!(status_of(&status)["status"], "Success", "{status}");
        out
    }
}

async fn check(env: &Env, id: &str, what: &str, expect: &[&str]) {
    let own = env.recorded(id).await;
    for line in expect {
        assert!(
            own.contains(line),
            "{what}: the container's own process lacks {line:?}:\n{own}"
        );
    }
    let sync = env.exec_sync(id, &["sh", "-c", IDENTITY]).await;
    assert_eq!(
        sync.exit_code,
        0,
        "{what}: {}",
        String::from_utf8_lossy(&sync.stderr)
    );
    assert_eq!(
        String::from_utf8(sync.stdout).unwrap(),
        own,
        "{what}: ExecSync's identity differs from the container's"
    );
    assert_eq!(
        env.streamed(id).await,
        own,
        "{what}: streaming Exec's identity differs from the container's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_with_the_containers_identity_on_runc_and_crun() {
    let env = Env {
        b: BusyboxDaemon::start(Options::default()).await,
        logs: tempfile::tempdir().unwrap(),
    };
    for (handler, userns_base) in [("runc", 400_000u32), ("crun", 465_536u32)] {
        let pod = env.pod(&format!("ident-{handler}"), handler, None).await;
        for case in cases() {
            let id = env.run(&pod, case.name, case.sc, case.working_dir).await;
            check(&env, &id, &format!("{handler}/{}", case.name), case.expect).await;
        }
        // A pod with a user namespace: the ids are the container's, inside the namespace.
        let pod = env
            .pod(
                &format!("ident-userns-{handler}"),
                handler,
                Some(userns_base),
            )
            .await;
        let sc = cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            ..Default::default()
        };
        let id = env.run(&pod, "userns", sc, "").await;
        check(
            &env,
            &id,
            &format!("{handler}/userns"),
            &["Uid:\t1000\t1000\t1000\t1000", "CapEff:\t0000000000000000"],
        )
        .await;
        let host_uid =
            std::fs::read_to_string(format!("/proc/{}/status", container_pid(&env, &id).await))
                .unwrap();
        assert!(
            host_uid.contains(&format!("Uid:\t{}", userns_base + 1000)),
            "{handler}: the userns container is not mapped: {host_uid}"
        );
    }
}

async fn container_pid(env: &Env, id: &str) -> u32 {
    let resp = env
        .b
        .d
        .runtime()
        .await
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    info["pid"].as_u64().unwrap() as u32
}

/// Host processes whose command line contains `needle`, not counting zombies.
fn live_procs(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(needle)
                && !stat.contains(") Z ")
        })
        .count()
}

/// Issue 11 item 3: an ExecSync that times out leaves nothing behind once it returned — not
/// even a zombie in a pod's shared PID namespace — and one whose client gives up first is
/// killed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_timeouts_and_cancelled_clients_leave_no_process() {
    let env = Env {
        b: BusyboxDaemon::start(Options::default()).await,
        logs: tempfile::tempdir().unwrap(),
    };
    for handler in ["runc", "crun"] {
        let mut req = pods::pod(&format!("timeout-{handler}"));
        req.runtime_handler = handler.into();
        pods::config(&mut req).log_directory = env.logs.path().join(handler).display().to_string();
        pods::namespaces(&mut req).pid = cri::NamespaceMode::Pod as i32;
        let config = req.config.clone().unwrap();
        let mut rt = env.b.d.runtime().await;
        let pod_id = rt
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let sc = cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = env.run(&(pod_id, config), "main", sc, "").await;

        // The server's timeout: DeadlineExceeded, and nothing of the exec is left, in the
        // pod's own view (pgrep in the shared PID namespace sees zombies too) and the host's.
        let started = Instant::now();
        let err = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "sleep 4321 & exec sleep 4321".into(),
                ],
                timeout: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::DeadlineExceeded,
            "{handler}: {err:?}"
        );
        assert!(started.elapsed() >= Duration::from_secs(1));
        let seen = env
            .exec_sync(
                &id,
                &[
                    "sh",
                    "-c",
                    "ps -o pid,stat,args | grep [s]leep.4321 || true",
                ],
            )
            .await;
        assert_eq!(
            String::from_utf8_lossy(&seen.stdout),
            "",
            "{handler}: the timed-out exec is still in the pod"
        );
        assert_eq!(live_procs("sleep 4321"), 0, "{handler}: left on the host");

        // The client gives up first (its own deadline): the exec is killed all the same.
        let mut request = tonic::Request::new(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "sleep 4322 & exec sleep 4322".into(),
            ],
            timeout: 0,
        });
        request.set_timeout(Duration::from_secs(2));
        let err = rt.exec_sync(request).await.unwrap_err();
        assert!(
            matches!(
                err.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ),
            "{handler}: {err:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while live_procs("sleep 4322") > 0 {
            assert!(
                Instant::now() < deadline,
                "{handler}: the exec of a client that gave up runs on"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = env
            .exec_sync(
                &id,
                &[
                    "sh",
                    "-c",
                    "ps -o pid,stat,args | grep [s]leep.4322 || true",
                ],
            )
            .await;
        assert_eq!(String::from_utf8_lossy(&seen.stdout), "", "{handler}");
    }
}
