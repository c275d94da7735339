//! Handlers of `RuntimeService`, one file per RPC.

pub mod list_pod_sandbox;
pub mod pod_sandbox;
pub mod pod_sandbox_status;
pub mod remove_pod_sandbox;
pub mod run_pod_sandbox;
pub mod runtime_config;
pub mod status;
pub mod stop_pod_sandbox;
pub mod update_runtime_config;
pub mod version;
