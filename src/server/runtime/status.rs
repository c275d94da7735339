//! `Status`: RuntimeReady and NetworkReady conditions, handlers (the default one also under
//! the empty name) and features.

use std::collections::HashMap;

use k8s_cri::v1::{
    RuntimeCondition, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusRequest,
    StatusResponse,
};

use crate::daemon::Daemon;
use crate::error::{Error, Result};

/// Every configured handler by name, and the default handler once more under the empty name:
/// in the CRI the empty name denotes the handler a pod without a RuntimeClass runs with, and
/// clients (critest, kubelet's feature checks) look their handler up by that name.
fn handlers(daemon: &Daemon) -> Vec<RuntimeHandler> {
    let runtime = &daemon.config.runtime;
    let features = |name: &str| RuntimeHandlerFeatures {
        // Reported only where the capability works end to end.
        recursive_read_only_mounts: daemon
            .containers()
            .is_ok_and(|c| c.handler_supports_rro(name)),
        // Both handlers: crius idmaps the rootfs layers and volumes itself.
        user_namespaces: daemon
            .sandboxes()
            .is_ok_and(|s| s.supports_user_namespaces()),
    };
    let default = runtime
        .handlers
        .contains_key(&runtime.default_handler)
        .then(|| RuntimeHandler {
            name: String::new(),
            features: Some(features(&runtime.default_handler)),
        });
    default
        .into_iter()
        .chain(runtime.handlers.keys().map(|name| RuntimeHandler {
            name: name.clone(),
            features: Some(features(name)),
        }))
        .collect()
}

pub async fn status(daemon: &Daemon, req: StatusRequest) -> Result<StatusResponse> {
    let runtime = daemon.runtime_condition().await;
    let network = daemon.network_condition().await;
    let conditions = [("RuntimeReady", runtime), ("NetworkReady", network)]
        .into_iter()
        .map(|(kind, cond)| RuntimeCondition {
            r#type: kind.into(),
            status: cond.is_ok(),
            reason: cond
                .as_ref()
                .err()
                .map(|c| c.reason.to_string())
                .unwrap_or_default(),
            message: cond.err().map(|c| c.message).unwrap_or_default(),
        })
        .collect();

    let runtime_handlers = handlers(daemon);

    let mut info = HashMap::new();
    if req.verbose {
        let config = serde_json::to_string(&*daemon.config)
            .map_err(|e| Error::Internal(format!("render config: {e}")))?;
        info.insert("config".to_string(), config);
        let state = serde_json::json!({ "podCIDR": daemon.pod_cidr() });
        info.insert("runtimeState".to_string(), state.to_string());
    }
    Ok(StatusResponse {
        status: Some(RuntimeStatus { conditions }),
        info,
        runtime_handlers,
        // Merge and Strict are applied by the spec generator (tested end to end).
        features: Some(k8s_cri::v1::RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
    })
}
