use std::fs;

use super::*;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn main_file(&self, text: &str) -> &Self {
        fs::write(self.dir.path().join("crius.toml"), text).unwrap();
        self
    }
    fn drop_in(&self, name: &str, text: &str) -> &Self {
        let d = self.dir.path().join("crius.d");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(name), text).unwrap();
        self
    }
    fn sources(&self, overrides: Vec<Override>) -> Sources {
        Sources {
            file: self.dir.path().join("crius.toml"),
            file_required: false,
            dir: self.dir.path().join("crius.d"),
            overrides,
        }
    }
    fn load(&self) -> Result<Config, ConfigError> {
        load(&self.sources(Vec::new()))
    }
}

#[test]
fn no_files_gives_defaults() {
    let env = Env::new();
    let mut defaults = Config::default();
    defaults.runtime.pick_default_handler();
    assert_eq!(env.load().unwrap(), defaults);
}

#[test]
fn an_empty_default_handler_picks_crun_when_installed_else_runc() {
    let mut runtime = RuntimeConfig::default();
    assert_eq!(runtime.default_handler, "");
    runtime.handlers.get_mut("crun").unwrap().path = "/nonexistent/crun".into();
    runtime.pick_default_handler();
    assert_eq!(runtime.default_handler, "runc");

    let mut runtime = RuntimeConfig::default();
    runtime.handlers.get_mut("crun").unwrap().path = "/bin/sh".into();
    runtime.pick_default_handler();
    assert_eq!(runtime.default_handler, "crun");

    // Configured: kept, installed or not.
    let mut runtime = RuntimeConfig {
        default_handler: "runc".into(),
        ..RuntimeConfig::default()
    };
    runtime.handlers.get_mut("crun").unwrap().path = "/bin/sh".into();
    runtime.pick_default_handler();
    assert_eq!(runtime.default_handler, "runc");
}

#[test]
fn defaults_are_valid_and_round_trip_through_toml() {
    let mut cfg = Config::default();
    cfg.runtime.pick_default_handler();
    cfg.validate().unwrap();
    let text = cfg.to_toml();
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back, cfg);
    assert!(text.contains("[runtime.handlers.crun]"), "{text}");
}

#[test]
fn drop_in_overrides_only_the_keys_it_sets() {
    let env = Env::new();
    env.main_file("[image]\ndefault_registry = \"quay.io\"\nmax_concurrent_downloads = 5\n")
        .drop_in("20-b.toml", "[image]\nmax_concurrent_downloads = 7\n")
        .drop_in(
            "10-a.toml",
            "[image]\nmax_concurrent_downloads = 6\n[log]\nlevel = \"debug\"\n",
        )
        .drop_in("ignored.txt", "not toml at all [");
    let cfg = env.load().unwrap();
    assert_eq!(cfg.image.default_registry, "quay.io");
    assert_eq!(
        cfg.image.max_concurrent_downloads, 7,
        "lexical order: 20-b wins"
    );
    assert_eq!(cfg.log.level, "debug");
    assert_eq!(cfg.metrics, MetricsConfig::default());
}

#[test]
fn handler_tables_merge_with_the_defaults() {
    let env = Env::new();
    env.main_file("[runtime.handlers.kata]\npath = \"/opt/kata/bin/kata-runtime\"\n");
    let cfg = env.load().unwrap();
    assert_eq!(
        cfg.runtime.handlers.keys().collect::<Vec<_>>(),
        ["crun", "kata", "runc"]
    );
}

#[test]
fn flags_override_files() {
    let env = Env::new();
    env.main_file("[api]\nlisten = \"/run/a.sock\"\n");
    let cfg = load(&env.sources(vec![Override {
        key: "api.listen",
        value: toml::Value::String("/run/b.sock".into()),
        flag: "--listen",
    }]))
    .unwrap();
    assert_eq!(cfg.api.listen, PathBuf::from("/run/b.sock"));
}

#[test]
fn unknown_key_names_file_and_key() {
    let env = Env::new();
    env.drop_in("50-x.toml", "[image]\nmax_concurent_downloads = 2\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("50-x.toml"), "{err}");
    assert!(err.contains("max_concurent_downloads"), "{err}");
}

#[test]
fn unknown_table_names_file_and_key() {
    let env = Env::new();
    env.main_file("[imagez]\nx = 1\n");
    let err = env.load().unwrap_err().to_string();
    assert!(
        err.contains("crius.toml") && err.contains("imagez"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_file_and_key() {
    let env = Env::new();
    env.main_file("[metrics]\nenabled = \"yes\"\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("crius.toml"), "{err}");
    assert!(err.contains("metrics.enabled"), "{err}");
}

#[test]
fn invalid_value_names_the_file_that_set_it() {
    let env = Env::new();
    env.main_file("[image]\nmax_concurrent_downloads = 3\n")
        .drop_in("30-bad.toml", "[image]\nmax_concurrent_downloads = 0\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("image.max_concurrent_downloads"), "{err}");
    assert!(err.contains("30-bad.toml"), "{err}");
}

#[test]
fn image_limits_default_and_max_layers_is_bounded() {
    let env = Env::new();
    let cfg = env.load().unwrap();
    assert_eq!(cfg.image.max_layer_size, super::DEFAULT_MAX_LAYER_SIZE);
    assert_eq!(cfg.image.max_image_size, super::DEFAULT_MAX_IMAGE_SIZE);
    assert_eq!(cfg.image.max_layers, 120);
    let env = Env::new();
    env.main_file("[image]\nmax_layer_size = 0\nmax_image_size = 0\nmax_layers = 501\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("image.max_layers"), "{err}");
}

#[test]
fn invalid_enum_value_is_refused() {
    let env = Env::new();
    env.main_file("[runtime]\ncgroup_driver = \"cgroupv3\"\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("runtime.cgroup_driver"), "{err}");
}

#[test]
fn default_handler_must_exist() {
    let env = Env::new();
    env.main_file("[runtime]\ndefault_handler = \"youki\"\n");
    let err = env.load().unwrap_err().to_string();
    assert!(
        err.contains("runtime.default_handler") && err.contains("youki"),
        "{err}"
    );
}

#[test]
fn mirror_with_scheme_is_refused() {
    let env = Env::new();
    env.main_file("[image.registries.\"docker.io\"]\nmirrors = [\"https://mirror.local\"]\n");
    let err = env.load().unwrap_err().to_string();
    assert!(
        err.contains("mirrors") && err.contains("crius.toml"),
        "{err}"
    );
}

#[test]
fn registry_ca_file_must_be_absolute() {
    let env = Env::new();
    env.main_file("[image.registries.\"127.0.0.1:5000\"]\nca_file = \"ca.pem\"\n");
    let err = env.load().unwrap_err().to_string();
    assert!(
        err.contains("image.registries.\"127.0.0.1:5000\".ca_file") && err.contains("absolute"),
        "{err}"
    );
    env.main_file("[image.registries.\"127.0.0.1:5000\"]\nca_file = \"/etc/crius/ca.pem\"\n");
    let config = env.load().unwrap();
    assert_eq!(
        config.image.registries["127.0.0.1:5000"].ca_file,
        std::path::PathBuf::from("/etc/crius/ca.pem")
    );
}

#[test]
fn invalid_log_level_is_refused() {
    let env = Env::new();
    env.main_file("[log]\nlevel = \"loud=\"\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("log.level"), "{err}");
}

#[test]
fn syntax_error_names_the_file() {
    let env = Env::new();
    env.drop_in("10-broken.toml", "[api\nlisten = 1\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("10-broken.toml"), "{err}");
}

#[test]
fn explicit_missing_main_file_is_an_error() {
    let env = Env::new();
    let mut sources = env.sources(Vec::new());
    sources.file_required = true;
    assert!(matches!(load(&sources), Err(ConfigError::Read { .. })));
}

#[test]
fn durations_parse_like_go_durations() {
    use std::time::Duration;
    assert_eq!(parse_duration("4h").unwrap(), Duration::from_secs(4 * 3600));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    for bad in ["", "4", "h", "4d", "1h30", "-1s", "99999999999999999999h"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn streaming_limits_and_tls_are_validated() {
    let env = Env::new();
    env.main_file("[api]\nstream_idle_timeout = \"4 hours\"\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("api.stream_idle_timeout"), "{err}");
    let env = Env::new();
    env.main_file("[api]\nstream_max_sessions = 0\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("api.stream_max_sessions"), "{err}");
    let env = Env::new();
    env.main_file("[api]\nstream_tls_cert = \"/etc/crius/stream.crt\"\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("api.stream_tls_key"), "{err}");
    let env = Env::new();
    env.main_file(
        "[api]\nstream_tls_cert = \"stream.crt\"\nstream_tls_key = \"/etc/crius/stream.key\"\n",
    );
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("api.stream_tls_cert"), "{err}");
    let env = Env::new();
    env.main_file(
        "[api]\nstream_idle_timeout = \"30m\"\nstream_tls_cert = \"/etc/crius/stream.crt\"\nstream_tls_key = \"/etc/crius/stream.key\"\n",
    );
    let cfg = env.load().unwrap();
    assert_eq!(cfg.api.stream_idle_timeout, "30m");
}

#[test]
fn tracing_is_off_by_default_and_a_collector_endpoint_turns_it_on() {
    let cfg = Env::new().load().unwrap();
    assert!(!cfg.tracing.enabled());
    assert_eq!(cfg.tracing.sampling_rate_per_million, 1_000_000);
    assert_eq!(cfg.tracing.service_name, "crius");

    let env = Env::new();
    env.main_file(
        "[tracing]\nendpoint = \"http://127.0.0.1:4317\"\nsampling_rate_per_million = 250000\nservice_name = \"crius-node1\"\n",
    );
    let cfg = env.load().unwrap();
    assert!(cfg.tracing.enabled());
    assert_eq!(cfg.tracing.endpoint, "http://127.0.0.1:4317");
    assert_eq!(cfg.tracing.sampling_rate_per_million, 250_000);
    assert_eq!(cfg.tracing.service_name, "crius-node1");
    assert!(cfg.to_toml().contains("[tracing]"), "{}", cfg.to_toml());
    for ok in [
        "http://localhost:4317",
        "http://[::1]:4317/",
        "http://otel.monitoring.svc:4317",
    ] {
        let mut cfg = Config::default();
        cfg.tracing.endpoint = ok.into();
        cfg.validate().unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
}

#[test]
fn bad_tracing_endpoints_and_rates_are_refused_naming_the_key() {
    for (bad, why) in [
        ("127.0.0.1:4317", "is not http://HOST:PORT"),
        (
            "https://collector:4317",
            "TLS to the collector is not supported",
        ),
        ("grpc://collector:4317", "is not http://HOST:PORT"),
        ("http://collector", "is not http://HOST:PORT"),
        ("http://:4317", "is not http://HOST:PORT"),
        ("http://collector:0", "is not http://HOST:PORT"),
        ("http://collector:4317/v1/traces", "is not http://HOST:PORT"),
        ("http://user@collector:4317", "is not http://HOST:PORT"),
    ] {
        let env = Env::new();
        env.main_file(&format!("[tracing]\nendpoint = {bad:?}\n"));
        let err = env.load().unwrap_err().to_string();
        assert!(err.contains("`tracing.endpoint`"), "{bad}: {err}");
        assert!(err.contains(why), "{bad}: {err}");
    }

    let env = Env::new();
    env.main_file("[tracing]\nsampling_rate_per_million = 1000001\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("`tracing.sampling_rate_per_million`"), "{err}");
    assert!(
        err.contains("1000001 is not between 0 and 1000000"),
        "{err}"
    );

    let env = Env::new();
    env.main_file("[tracing]\nsampling_rate_per_million = -1\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("tracing.sampling_rate_per_million"), "{err}");

    let env = Env::new();
    env.main_file("[tracing]\nservice_name = \" \"\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("`tracing.service_name`"), "{err}");

    let env = Env::new();
    env.main_file("[tracing]\nsample_rate = 5\n");
    let err = env.load().unwrap_err().to_string();
    assert!(err.contains("sample_rate"), "{err}");
}
