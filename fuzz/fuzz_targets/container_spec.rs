//! CRI CreateContainer request → up-front validation → OCI spec generation → JSON.
//! Neither may panic, whatever the request; the spec is generated even for requests the
//! validation refuses (the generator must stand on its own).
#![no_main]

use crius::container::{spec, validate};
use k8s_cri::v1 as cri;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = cri::CreateContainerRequest::decode(data) else {
        return;
    };
    let config = req.config.unwrap_or_default();
    let pod = req.sandbox_config.unwrap_or_default();
    let node = validate::Node {
        cpus: (0..4).collect(),
        mems: [0].into(),
    };
    let _ = validate::container_config(&config, &node);
    let host = spec::HostView {
        capabilities: ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"]
            .map(String::from)
            .to_vec(),
        cgroup_v2: true,
        arch: "x86_64".into(),
        min_oom_score_adj: -1000,
        ..Default::default()
    };
    let image = spec::ImageView {
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    };
    let input = spec::SpecInput {
        container_id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        config: &config,
        pod: spec::PodView {
            sandbox_id: "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
            config: &pod,
            netns: Some("/run/netns/x".into()),
            ipcns: None,
            utsns: None,
            pidns: None,
            userns: None,
            hostname: "pod".into(),
            resolv_conf: Some("/run/pod/resolv.conf".into()),
            hosts: None,
            hostname_file: None,
            shm: None,
            cgroup_parent: "/kubepods".into(),
        },
        image: &image,
        rootfs: "/run/rootfs".into(),
        etc_passwd: Some("root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n".into()),
        etc_group: Some("root:x:0:\nnobody:x:65534:\n".into()),
        seccomp_localhost: None,
        target_pidns: None,
        host: &host,
    };
    if let Ok(generated) = spec::generate(&input) {
        let _ = spec::config_json(&generated.spec);
    }
});
