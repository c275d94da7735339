//! `crius`: the composition root. Parses flags, loads the configuration (failing before anything
//! is bound), installs logging, binds the sockets and runs the daemon until SIGTERM/SIGINT.

#![deny(unsafe_code)]

use crius::{app, config, metrics, socket};

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use config::{LogFormat, Override, Sources};

#[derive(Parser)]
#[command(
    name = "crius",
    about = "A Kubernetes CRI container runtime",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Main configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Drop-in directory: *.toml applied in lexical order after the main file.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/etc/crius/crius.d"
    )]
    config_dir: PathBuf,
    /// CRI unix socket ([api] listen).
    #[arg(long, global = true, value_name = "PATH")]
    listen: Option<PathBuf>,
    /// Persistent state directory ([state] root).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Volatile state directory ([state] runroot).
    #[arg(long, global = true, value_name = "DIR")]
    runroot: Option<PathBuf>,
    /// Log level or filter directive ([log] level).
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format ([log] format).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Prometheus endpoint IP:PORT ([metrics] address).
    #[arg(long, global = true, value_name = "ADDR")]
    metrics_address: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI (the default).
    Serve,
    /// Print the effective configuration as TOML.
    Config,
    /// Print the version.
    Version,
}

const DEFAULT_CONFIG: &str = "/etc/crius/crius.toml";

impl Cli {
    fn sources(&self) -> Sources {
        let mut overrides = Vec::new();
        let mut set = |key, value: Option<toml::Value>, flag| {
            if let Some(value) = value {
                overrides.push(Override { key, value, flag });
            }
        };
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| toml::Value::String(p.display().to_string()))
        };
        set("api.listen", path(&self.listen), "--listen");
        set("state.root", path(&self.root), "--root");
        set("state.runroot", path(&self.runroot), "--runroot");
        set(
            "log.level",
            self.log_level.clone().map(toml::Value::String),
            "--log-level",
        );
        let format = self.log_format.map(|f| {
            toml::Value::String(match f {
                LogFormat::Text => "text".into(),
                LogFormat::Json => "json".into(),
            })
        });
        set("log.format", format, "--log-format");
        set(
            "metrics.address",
            self.metrics_address.clone().map(toml::Value::String),
            "--metrics-address",
        );
        Sources {
            file: self
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG)),
            file_required: self.config.is_some(),
            dir: self.config_dir.clone(),
            overrides,
        }
    }
}

/// Installs the log output and, when `[tracing] endpoint` is set, the OpenTelemetry exporter
/// (inside the runtime: its batch processor and gRPC channel run on it). `[log] level` filters
/// the log output only; the exported spans are the daemon's own at info and above.
fn init_logging(cfg: &config::Config) -> anyhow::Result<Option<crius::telemetry::Tracing>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let log = &cfg.log;
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&log.level)
        .with_context(|| format!("log level {:?}", log.level))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match log.format {
        LogFormat::Text => fmt.with_ansi(false).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let (otel, tracing) = match crius::telemetry::layer(&cfg.tracing)? {
        Some((layer, tracing)) => (Some(layer), Some(tracing)),
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .context("install the log subscriber")?;
    if tracing.is_some() {
        tracing::info!(
            endpoint = %cfg.tracing.endpoint,
            sampling_rate_per_million = cfg.tracing.sampling_rate_per_million,
            "exporting traces over OTLP"
        );
    }
    Ok(tracing)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested");
}

fn serve(cfg: config::Config, sources: Sources) -> anyhow::Result<()> {
    // Before the runtime's threads exist (see `memory`).
    crius::memory::tune_allocator();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crius-worker")
        .build()
        .context("start tokio runtime")?;
    let tracing = {
        let _in_runtime = rt.enter();
        init_logging(&cfg)?
    };
    rt.block_on(async move {
        let result = serve_in_runtime(cfg, sources).await;
        // The last spans (the shutdown's too) go out before the process ends.
        if let Some(tracing) = tracing {
            tracing.shutdown().await;
        }
        result
    })
}

async fn serve_in_runtime(cfg: config::Config, sources: Sources) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.state.root)
        .with_context(|| format!("create state root {}", cfg.state.root.display()))?;
    std::fs::create_dir_all(&cfg.state.runroot)
        .with_context(|| format!("create runroot {}", cfg.state.runroot.display()))?;
    // One daemon per state root: a second one would corrupt the first's records.
    let lock_path = cfg.state.root.join("crius.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("open {}", lock_path.display()))?;
    // A daemon killed a moment ago may still share the lock through a child it had forked
    // but not yet exec'd (the lock's descriptor closes at that exec): wait a little.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut waited = false;
    while lock.try_lock().is_err() {
        if !waited {
            tracing::warn!(path = %lock_path.display(), "state root lock busy; waiting up to 5 s");
            waited = true;
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "state root {} is in use by another crius",
                cfg.state.root.display()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Read the streaming TLS files before anything is bound.
    let stream_settings = crius::streaming::server::StreamSettings::from_config(&cfg.api)
        .map_err(anyhow::Error::msg)?;
    let listener = socket::bind(&cfg.api.listen)?;
    let metrics_listener = if cfg.metrics.enabled {
        let addr = cfg.metrics.address.clone();
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                socket::remove(&cfg.api.listen);
                anyhow::bail!("bind metrics address {addr}: {e}");
            }
        }
    } else {
        None
    };
    let stream_addr = format!("{}:{}", cfg.api.stream_address, cfg.api.stream_port);
    let stream_listener = match tokio::net::TcpListener::bind(&stream_addr).await {
        Ok(l) => l,
        Err(e) => {
            socket::remove(&cfg.api.listen);
            anyhow::bail!("bind streaming address {stream_addr}: {e}");
        }
    };
    let listen = cfg.api.listen.clone();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        socket = %listen.display(),
        metrics = %metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_else(|| "disabled".into()),
        streaming = %stream_listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        "crius serving"
    );
    let metrics = metrics::Metrics::new().context("register metrics")?;
    let daemon = crius::daemon::Daemon::new(cfg, metrics, Some(sources));
    tokio::spawn(crius::memory::trim_periodically());
    let result = app::run(
        daemon,
        listener,
        metrics_listener,
        Some((stream_listener, stream_settings)),
        shutdown_signal(),
    )
    .await;
    socket::remove(&listen);
    drop(lock);
    result.context("grpc server")?;
    tracing::info!("crius stopped");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let sources = cli.sources();
    let cfg = match config::load(&sources) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("crius: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", cfg.to_toml());
            Ok(())
        }
        Command::Version => {
            println!("crius {} (CRI v1)", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve => serve(cfg, sources),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crius: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
