//! Handlers of `RuntimeService`, one file per RPC.

pub mod runtime_config;
pub mod status;
pub mod update_runtime_config;
pub mod version;
