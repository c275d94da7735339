//! Exec and Attach end to end: the real daemon returns a URL, the test connects
//! there, upgrades to SPDY/3.1 and speaks Kubernetes' remote command / port-forward protocols
//! (the stream order and headers client-go uses), against busybox containers under runc.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crius_e2e::busybox::BusyboxDaemon;
use crius_e2e::daemon::{Daemon, Options};
use crius_e2e::network::TestNetwork;
use crius_e2e::pods;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

mod remote;
use remote::{read_all, read_until, session, status_of, upgrade};

struct Env {
    d: Daemon,
    _net: TestNetwork,
    image: String,
}

impl Env {
    async fn new() -> Env {
        let BusyboxDaemon { d, net, image } = BusyboxDaemon::start(Options::default()).await;
        Env {
            d,
            _net: net,
            image,
        }
    }

    async fn rt(&self) -> RuntimeServiceClient<Channel> {
        self.d.runtime().await
    }

    async fn pod(&self, name: &str) -> (String, cri::PodSandboxConfig) {
        let req = pods::pod(name);
        let config = req.config.clone().unwrap();
        let id = self
            .rt()
            .await
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    /// Creates and starts a container running `cmd`.
    async fn run(
        &self,
        pod: &(String, cri::PodSandboxConfig),
        name: &str,
        cmd: &[&str],
        tty: bool,
        stdin: bool,
    ) -> String {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            tty,
            stdin,
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut rt = self.rt().await;
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.0.clone(),
                config: Some(config),
                sandbox_config: Some(pod.1.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        id
    }

    async fn exec_url(&self, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
        self.rt()
            .await
            .exec(cri::ExecRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .await
            .unwrap()
            .into_inner()
            .url
    }
}

fn procs_matching(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_stdio_exit_codes_terminals_and_cleans_up() {
    let env = Env::new().await;
    let pod = env.pod("exec").await;
    let id = env
        .run(&pod, "main", &["sleep", "1000"], false, false)
        .await;

    // Pipes: stdin in, stdout and stderr apart, exit code 3 as a v4 status.
    let url = env
        .exec_url(
            &id,
            &[
                "sh",
                "-c",
                "echo out; echo err >&2; read l; echo got:$l; exit 3",
            ],
            false,
            true,
        )
        .await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let mut s = session(&url, true, true, false).await;
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    let (out, err, status) = tokio::join!(
        read_all(s.stdout),
        read_all(s.stderr.take().unwrap()),
        read_all(s.error)
    );
    assert_eq!(out, "out\ngot:hello\n");
    assert_eq!(err, "err\n");
    let status = status_of(&status);
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    // Success is a Success status; a token works once.
    let url = env.exec_url(&id, &["true"], false, false).await;
    let s = session(&url, false, true, false).await;
    let (out, status) = tokio::join!(read_all(s.stdout), read_all(s.error));
    assert_eq!(out, "");
    assert_eq!(status_of(&status)["status"], "Success");
    let (head, conn) = upgrade(&url, &["v4.channel.k8s.io"]).await;
    assert!(conn.is_none());
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // A terminal: the size from the resize channel, input echoed, \r\n line ends.
    let url = env
        .exec_url(
            &id,
            &["sh", "-c", "sleep 1; stty size; read l; echo [$l]"],
            true,
            true,
        )
        .await;
    let mut s = session(&url, true, false, true).await;
    let mut resize = s.resize.take().unwrap();
    resize
        .write_all(br#"{"Width":100,"Height":40}"#)
        .await
        .unwrap();
    let seen = read_until(&mut s.stdout, "40 100").await;
    assert!(seen.contains("40 100\r\n"), "{seen:?}");
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"abc\n").await.unwrap();
    let rest = read_all(s.stdout).await;
    assert!(rest.contains("[abc]\r\n"), "{rest:?}");
    assert_eq!(status_of(&read_all(s.error).await)["status"], "Success");

    // A client that goes away: the exec'd process is killed.
    let marker = "sleep 4242";
    let url = env.exec_url(&id, &["sh", "-c", marker], false, false).await;
    let s = session(&url, false, true, false).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while procs_matching(marker) == 0 {
        assert!(std::time::Instant::now() < deadline, "exec never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.conn.close().await;
    while procs_matching(marker) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the exec outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bad requests name what is wrong.
    let mut rt = env.rt().await;
    let bad = |tty, stderr, stdout, cmd: &[&str]| cri::ExecRequest {
        container_id: id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: false,
        stdout,
        stderr,
    };
    let e = rt.exec(bad(true, true, true, &["true"])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("tty and stderr"), "{}", e.message());
    let e = rt
        .exec(bad(false, false, false, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = rt.exec(bad(false, false, true, &[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let mut missing = bad(false, false, true, &["true"]);
    missing.container_id = "0123456789ab".into();
    assert_eq!(
        rt.exec(missing).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let e = rt
        .exec(bad(false, false, true, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);

    // An unknown protocol is refused with the accepted ones.
    let id = env
        .run(&pod, "again", &["sleep", "1000"], false, false)
        .await;
    let url = env.exec_url(&id, &["true"], false, false).await;
    let (head, conn) = upgrade(&url, &["v9.channel.k8s.io"]).await;
    assert!(conn.is_none());
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_joins_the_containers_stdio_until_it_exits() {
    let env = Env::new().await;
    let pod = env.pod("attach").await;
    let id = env
        .run(
            &pod,
            "echo",
            &[
                "sh",
                "-c",
                "while read l; do echo echo:$l; [ $l = bye ] && exit 0; done",
            ],
            false,
            true,
        )
        .await;
    let url = env
        .rt()
        .await
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.contains("/attach/"), "{url}");
    let mut s = session(&url, true, true, false).await;
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"hi\n").await.unwrap();
    let seen = read_until(&mut s.stdout, "echo:hi\n").await;
    assert_eq!(seen, "echo:hi\n");
    stdin.write_all(b"bye\n").await.unwrap();
    let (rest, status) = tokio::join!(read_all(s.stdout), read_all(s.error));
    assert_eq!(rest, "echo:bye\n");
    assert_eq!(status_of(&status)["status"], "Success");

    // A terminal attach to a container without one is refused.
    let id = env
        .run(&pod, "plain", &["sleep", "1000"], false, false)
        .await;
    let e = env
        .rt()
        .await
        .attach(cri::AttachRequest {
            container_id: id,
            stdin: false,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}
