//! Semantic checks of a merged `Config`; each failure names the dotted key.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::Config;

type Invalid = (String, String);

fn fail<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T, Invalid> {
    Err((key.into(), message.into()))
}

fn absolute(key: &str, path: &Path) -> Result<(), Invalid> {
    if path.is_absolute() {
        Ok(())
    } else {
        fail(key, format!("{} must be an absolute path", path.display()))
    }
}

/// A registry host with an optional port, as in references: `docker.io`, `127.0.0.1:5000`.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && !host.contains("://")
        && !host.contains('/')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

impl Config {
    /// Checks every value; the first problem found is returned as (key, message).
    pub fn validate(&self) -> Result<(), Invalid> {
        absolute("api.listen", &self.api.listen)?;
        if self.api.stream_address.parse::<IpAddr>().is_err() {
            return fail(
                "api.stream_address",
                format!("{:?} is not an IP address", self.api.stream_address),
            );
        }
        if let Err(e) = super::parse_duration(&self.api.stream_idle_timeout) {
            return fail("api.stream_idle_timeout", e);
        }
        if self.api.stream_max_sessions == 0 {
            return fail("api.stream_max_sessions", "must be at least 1");
        }
        match (
            self.api.stream_tls_cert.as_os_str().is_empty(),
            self.api.stream_tls_key.as_os_str().is_empty(),
        ) {
            (true, true) => {}
            (false, false) => {
                absolute("api.stream_tls_cert", &self.api.stream_tls_cert)?;
                absolute("api.stream_tls_key", &self.api.stream_tls_key)?;
            }
            (true, false) => return fail("api.stream_tls_cert", "is required with stream_tls_key"),
            (false, true) => return fail("api.stream_tls_key", "is required with stream_tls_cert"),
        }

        absolute("state.root", &self.state.root)?;
        absolute("state.runroot", &self.state.runroot)?;
        if self.state.root == self.state.runroot {
            return fail("state.runroot", "must differ from state.root");
        }

        if self.runtime.handlers.is_empty() {
            return fail("runtime.handlers", "at least one handler is required");
        }
        for (name, handler) in &self.runtime.handlers {
            let key = format!("runtime.handlers.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return fail(key, "handler names use letters, digits, '-', '_' and '.'");
            }
            if handler.path.as_os_str().is_empty() {
                return fail(format!("{key}.path"), "must not be empty");
            }
        }
        if self.runtime.monitor_path.as_os_str().is_empty() {
            return fail("runtime.monitor_path", "must not be empty");
        }
        if self.runtime.pids_limit < 0 {
            return fail(
                "runtime.pids_limit",
                "must be 0 (no limit) or a positive count",
            );
        }
        if self.pod.shm_size < 4096 {
            return fail("pod.shm_size", "must be at least 4096 bytes");
        }
        // Empty: not decided yet (`RuntimeConfig::pick_default_handler`, at load).
        if !self.runtime.default_handler.is_empty()
            && !self
                .runtime
                .handlers
                .contains_key(&self.runtime.default_handler)
        {
            return fail(
                "runtime.default_handler",
                format!(
                    "{:?} is not a configured handler (have: {})",
                    self.runtime.default_handler,
                    self.runtime
                        .handlers
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }

        if !valid_host(&self.image.default_registry) {
            return fail(
                "image.default_registry",
                format!("{:?} is not a registry host", self.image.default_registry),
            );
        }
        if !(1..=super::MAX_OVERLAY_LAYERS).contains(&self.image.max_layers) {
            return fail(
                "image.max_layers",
                format!(
                    "{} is not between 1 and {} (the kernel's overlay limit)",
                    self.image.max_layers,
                    super::MAX_OVERLAY_LAYERS
                ),
            );
        }
        if !(1..=64).contains(&self.image.max_concurrent_downloads) {
            return fail(
                "image.max_concurrent_downloads",
                format!(
                    "{} is not between 1 and 64",
                    self.image.max_concurrent_downloads
                ),
            );
        }
        if !self.image.auth_file.as_os_str().is_empty() {
            absolute("image.auth_file", &self.image.auth_file)?;
        }
        for (host, registry) in &self.image.registries {
            let key = format!("image.registries.\"{host}\"");
            if !valid_host(host) {
                return fail(key, format!("{host:?} is not a registry host"));
            }
            for mirror in &registry.mirrors {
                let mirror_host = mirror.split('/').next().unwrap_or("");
                if mirror.contains("://") || !valid_host(mirror_host) || mirror.ends_with('/') {
                    return fail(
                        format!("{key}.mirrors"),
                        format!("{mirror:?} is not host[:port][/prefix] (no scheme)"),
                    );
                }
            }
            if !registry.ca_file.as_os_str().is_empty() {
                absolute(&format!("{key}.ca_file"), &registry.ca_file)?;
            }
            if registry.mirror_only && registry.mirrors.is_empty() {
                return fail(
                    format!("{key}.mirror_only"),
                    "set but no mirrors are configured",
                );
            }
        }

        absolute("network.conf_dir", &self.network.conf_dir)?;
        if self.network.bin_dirs.is_empty() {
            return fail("network.bin_dirs", "at least one directory is required");
        }
        for dir in &self.network.bin_dirs {
            absolute("network.bin_dirs", dir)?;
        }

        if self.metrics.enabled && self.metrics.address.parse::<SocketAddr>().is_err() {
            return fail(
                "metrics.address",
                format!("{:?} is not IP:PORT", self.metrics.address),
            );
        }

        if let Err(message) = check_log_filter(&self.log.level) {
            return fail("log.level", message);
        }

        if !self.tracing.endpoint.is_empty() {
            if let Err(message) = check_otlp_endpoint(&self.tracing.endpoint) {
                return fail("tracing.endpoint", message);
            }
        }
        if self.tracing.sampling_rate_per_million > super::SAMPLING_ALL {
            return fail(
                "tracing.sampling_rate_per_million",
                format!(
                    "{} is not between 0 and {}",
                    self.tracing.sampling_rate_per_million,
                    super::SAMPLING_ALL
                ),
            );
        }
        if self.tracing.service_name.trim().is_empty() {
            return fail("tracing.service_name", "must not be empty");
        }
        Ok(())
    }
}

/// An OTLP/gRPC endpoint: `http://HOST:PORT` with nothing after the authority (the exporter
/// has no TLS: a collector on the node or in the pod network is reached in plain HTTP/2).
fn check_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    let quoted = crate::util::quote(endpoint);
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Err(if endpoint.starts_with("https://") {
            format!(
                "{quoted}: TLS to the collector is not supported; use http:// to a local collector"
            )
        } else {
            format!("{quoted} is not http://HOST:PORT")
        });
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let uri = endpoint
        .parse::<tonic::codegen::http::Uri>()
        .map_err(|e| format!("{quoted}: {e}"))?;
    let port_ok = uri.port_u16().is_some_and(|p| p != 0);
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@'])
        || uri.host().is_none_or(str::is_empty)
        || !port_ok
    {
        return Err(format!("{quoted} is not http://HOST:PORT"));
    }
    Ok(())
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A level, or comma-separated `target=level` directives whose levels are real levels.
fn check_log_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("must not be empty".into());
    }
    for directive in filter.split(',') {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, l)| l)
            .trim();
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?}: level {level:?} is not one of {}",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?}: {e}"))
}
