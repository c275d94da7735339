//! CRI request builders for pods, so tests state only what they vary.

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// Every pod sandbox the endpoint lists (ListPodSandbox without a filter).
pub async fn list_all(rt: &mut RuntimeServiceClient<Channel>) -> Vec<cri::PodSandbox> {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// A RunPodSandbox request for pod `name` in namespace `e2e` (uid derived from the name), with
/// a per-container PID namespace as kubelet sends by default.
pub fn pod(name: &str) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "e2e".to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: String::new(),
            labels: [("app".to_string(), name.to_string())].into(),
            // What kubelet sends for a pod without shareProcessNamespace.
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

/// The pod's config, for tweaking.
pub fn config(req: &mut cri::RunPodSandboxRequest) -> &mut cri::PodSandboxConfig {
    req.config.get_or_insert_with(Default::default)
}

/// The pod's Linux config, for tweaking.
pub fn linux(req: &mut cri::RunPodSandboxRequest) -> &mut cri::LinuxPodSandboxConfig {
    config(req).linux.get_or_insert_with(Default::default)
}

/// The pod's namespace options, for tweaking.
pub fn namespaces(req: &mut cri::RunPodSandboxRequest) -> &mut cri::NamespaceOption {
    linux(req)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
}

/// A hostPort → containerPort TCP mapping.
pub fn tcp_port(host_port: i32, container_port: i32) -> cri::PortMapping {
    cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port,
        host_port,
        host_ip: String::new(),
    }
}

/// A container `name` of `image` running `command`, with its own PID namespace as kubelet
/// sends by default.
pub fn container(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|c| c.to_string()).collect(),
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
    }
}
