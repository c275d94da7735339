//! CRI RunPodSandbox request → validated pod spec: never panics, refusals are InvalidArgument.
#![no_main]

use std::sync::OnceLock;

use crius::config::Config;
use crius::error::ErrorKind;
use k8s_cri::v1 as cri;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let config = CONFIG.get_or_init(Config::default);
    let Ok(req) = cri::RunPodSandboxRequest::decode(data) else {
        return;
    };
    if let Err(e) = crius::sandbox::spec::pod_spec(&req, config) {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        // Quoted input is cut: no refusal grows with the request.
        assert!(e.to_string().len() <= 8192, "{} bytes", e.to_string().len());
    }
});
