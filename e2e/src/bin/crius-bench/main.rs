//! `crius-bench`: a CRI benchmark that drives any CRI endpoint (crius, containerd, CRI-O) with
//! the same workloads, side by side and interleaved, and reports p50/p90/p99 and throughput per
//! operation as a table or JSON. `compare` (what `make bench` runs) starts crius and Debian's
//! containerd itself and adds the bare runc/crun floors; `startup`, `pull`, `cni` and
//! `containers` keep the older closing-note figures. It measures; it asserts nothing.
//!
//! Exit codes: 0 all measured, 1 a measurement failed (the rest is still reported),
//! 2 bad usage or nothing to measure (no endpoint answered, a daemon did not start).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod floor;
mod legacy;
mod peers;
mod report;
mod workload;

use report::Report;
use workload::{Plan, Target, WorkloadArgs};

#[derive(Parser)]
#[command(
    name = "crius-bench",
    version,
    about = "Benchmark CRI runtimes side by side: pods, containers, exec, images, stats, parallel churn",
    after_help = "Examples:\n  \
    crius-bench cri --endpoint unix:///run/crius/crius.sock --endpoint unix:///run/containerd/containerd.sock \\\n      \
    --image registry.local/busybox:latest -n 50\n  \
    crius-bench compare -n 20 --json > bench.json     (starts crius + containerd itself; what `make bench` runs)\n  \
    crius-bench floor --bundle /path/to/bundle --runtime runc --runtime crun"
)]
struct Cli {
    /// Print the report as JSON on stdout instead of the table
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive running CRI endpoints with the same workloads, interleaved round-robin
    Cri {
        /// CRI endpoint, unix:///path/to.sock; repeat to compare (first vs second is the ratio column)
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        #[command(flatten)]
        workload: WorkloadArgs,
        /// Also measure bare runtime create+start of this OCI bundle (the floor)
        #[arg(long)]
        floor_bundle: Option<PathBuf>,
        /// Runtimes for --floor-bundle
        #[arg(long = "floor-runtime", default_values = ["runc", "crun"])]
        floor_runtimes: Vec<String>,
    },
    /// Start crius and Debian's containerd on private dirs, run every workload on both plus the
    /// bare runc/crun floors of crius's bundle, stop both (`make bench`)
    Compare {
        #[command(flatten)]
        workload: WorkloadArgs,
        /// The crius binary (default: $CRIUS_BIN, else target/debug/crius)
        #[arg(long)]
        crius_bin: Option<PathBuf>,
        /// crius only, even if containerd is installed
        #[arg(long)]
        no_containerd: bool,
        /// Runtimes for the floor
        #[arg(long = "floor-runtime", default_values = ["runc", "crun"])]
        floor_runtimes: Vec<String>,
        /// Generate a 5-layer image of about this many MB (half compressible, gzip), push it to
        /// the loopback registry and use it as --pull-image: PullImage is then a cold pull of a
        /// big image on both (RemoveImage frees the blobs); 0: the small layered fixture
        #[arg(long, default_value_t = 0)]
        pull_mb: usize,
        /// Seconds to wait after the workloads before the daemons' RSS is read (idle threads
        /// exit, freed memory is returned)
        #[arg(long, default_value_t = 0)]
        settle_secs: u64,
    },
    /// Bare `create` + `start` + `delete --force` of an OCI bundle with each runtime
    Floor {
        /// Bundle directory holding config.json (root.path relative to it or absolute)
        #[arg(long)]
        bundle: PathBuf,
        /// Runtime binaries, interleaved
        #[arg(long = "runtime", default_values = ["runc", "crun"])]
        runtimes: Vec<String>,
        /// Containers per runtime
        #[arg(short = 'n', long, default_value_t = 20)]
        iterations: usize,
    },
    /// crius (started by the bench) and containerd: start-to-ready, RSS, Version round trip
    Startup {
        #[arg(long)]
        crius_bin: Option<PathBuf>,
    },
    /// crius: cold pull of a 100 MB, 5-layer image against skopeo + umoci
    Pull {
        #[arg(long)]
        crius_bin: Option<PathBuf>,
    },
    /// crius: 100 pods against the bare CNI ADD/DEL floor of the same conflist
    Cni {
        #[arg(long)]
        crius_bin: Option<PathBuf>,
    },
    /// crius: 50 containers against bare runc, monitor RSS against conmon, user namespaces
    Containers {
        #[arg(long)]
        crius_bin: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One client thread, as the bench always had: no cross-thread wake-ups inside a measured
    // round trip, and the client takes one core at most; the churn's workers are tasks and
    // stay concurrent.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crius-bench: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let json = cli.json;
    let legacy =
        |bin: Option<PathBuf>,
         f: fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
            set_crius_bin(bin);
            // The figures of older issues panic on failure; a panic is exit code 1, not 101.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(f()))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::from(1),
            }
        };
    match cli.command {
        Command::Startup { crius_bin } => legacy(crius_bin, || Box::pin(legacy::startup())),
        Command::Pull { crius_bin } => legacy(crius_bin, || Box::pin(legacy::pull())),
        Command::Cni { crius_bin } => legacy(crius_bin, || Box::pin(legacy::pods())),
        Command::Containers { crius_bin } => legacy(crius_bin, || Box::pin(legacy::containers())),
        Command::Floor {
            bundle,
            runtimes,
            iterations,
        } => {
            let mut report = Report::new();
            let ok = floor::run(&bundle, &runtimes, iterations, &mut report);
            finish(&report, json, ok)
        }
        Command::Cri {
            endpoints,
            workload,
            floor_bundle,
            floor_runtimes,
        } => runtime.block_on(async {
            let mut report = Report::new();
            let ok = match cri(&endpoints, &workload, &mut report).await {
                Ok(ok) => ok,
                Err(e) => {
                    eprintln!("crius-bench: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let floor_ok = match floor_bundle {
                Some(b) => floor::run(&b, &floor_runtimes, workload.iterations, &mut report),
                None => true,
            };
            finish(&report, json, ok && floor_ok)
        }),
        Command::Compare {
            workload,
            crius_bin,
            no_containerd,
            floor_runtimes,
            pull_mb,
            settle_secs,
        } => {
            set_crius_bin(crius_bin);
            runtime.block_on(async {
                let mut report = Report::new();
                let run = compare(
                    workload,
                    no_containerd,
                    &floor_runtimes,
                    (pull_mb, settle_secs),
                    &mut report,
                );
                match run.await {
                    Ok(ok) => finish(&report, json, ok),
                    Err(e) => {
                        eprintln!("crius-bench: {e:#}");
                        ExitCode::from(2)
                    }
                }
            })
        }
    }
}

fn set_crius_bin(bin: Option<PathBuf>) {
    if let Some(bin) = bin {
        // Before any daemon starts; the harness reads it when it spawns one.
        std::env::set_var("CRIUS_BIN", bin);
    }
}

/// `$CRIUS_BIN`, else the workspace's debug build; an error (not a panic) when missing.
fn crius_bin() -> Result<PathBuf> {
    let bin = match std::env::var_os("CRIUS_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/crius"),
    };
    if !bin.exists() {
        anyhow::bail!(
            "{} not found: build it (`cargo build`) or pass --crius-bin",
            bin.display()
        );
    }
    Ok(bin)
}

fn finish(report: &Report, json: bool, ok: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("crius-bench: json: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", report.table());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn connect_all(endpoints: &[String]) -> Result<Vec<Target>> {
    let mut targets: Vec<Target> = Vec::new();
    for e in endpoints {
        let t = Target::connect(e, &targets).await?;
        targets.push(t);
    }
    Ok(targets)
}

async fn cri(endpoints: &[String], args: &WorkloadArgs, report: &mut Report) -> Result<bool> {
    let plan = Plan::new(args)?;
    let mut targets = connect_all(endpoints).await?;
    Ok(workload::run(&plan, &mut targets, report).await)
}

async fn compare(
    mut args: WorkloadArgs,
    no_containerd: bool,
    floor_runtimes: &[String],
    (pull_mb, settle_secs): (usize, u64),
    report: &mut Report,
) -> Result<bool> {
    let crius_bin = crius_bin()?;
    eprintln!("crius-bench: pushing the test images to a loopback registry");
    let images = peers::images()?;
    args.image.get_or_insert_with(|| images.busybox.clone());
    if args.pull_image.is_none() && pull_mb > 0 {
        eprintln!("crius-bench: generating and pushing a {pull_mb} MB, 5-layer image");
        let (reference, compressed) = peers::big_image(&images.registry, pull_mb)?;
        report.note(format!(
            "pull image: {reference}, 5 gzip layers, {:.0} MB compressed, {pull_mb} MB unpacked",
            compressed as f64 / 1e6
        ));
        args.pull_image = Some(reference);
    }
    args.pull_image
        .get_or_insert_with(|| images.layered.clone());
    let plan = Plan::new(&args)?;
    let mut peers = vec![peers::crius(&crius_bin, &images).await?];
    if no_containerd {
        report.note("containerd: left out (--no-containerd)".into());
    } else {
        match peers::containerd(&images).await {
            Ok(p) => peers.push(p),
            Err(e) => report.note(format!(
                "containerd: not measured: {e:#} (apt-get install containerd)"
            )),
        }
    }
    let endpoints: Vec<String> = peers.iter().map(|p| p.endpoint()).collect();
    let mut targets = connect_all(&endpoints).await?;
    let started_rss: Vec<String> = peers.iter().map(|p| rss_kib(p.pid())).collect();
    // RSS once each daemon has run one pod + container lifecycle: its code pages for every
    // lifecycle step are mapped then, so growth from here to the end is what the workloads
    // themselves leave behind.
    let mut warm_rss = Vec::new();
    for (p, t) in peers.iter().zip(targets.iter_mut()) {
        let warmed = async {
            workload::pull(t, &plan.image).await?;
            workload::warm_up(&plan, t).await
        };
        match warmed.await {
            Ok(()) => warm_rss.push(rss_kib(p.pid())),
            Err(e) => {
                report.note(format!("{}: warm-up lifecycle: {e:#}", p.name));
                warm_rss.push("?".into());
            }
        }
    }
    let mut ok = workload::run(&plan, &mut targets, report).await;
    // The floor: crius's own bundle for a container of the same image and command.
    match workload::crius_bundle(&plan, &mut targets[0]).await {
        Ok(bundle) => ok &= floor::run(&bundle, floor_runtimes, plan.iterations, report),
        Err(e) => {
            report.note(format!("floor: no crius bundle: {e:#}"));
            ok = false;
        }
    }
    for t in &targets {
        workload::sweep(&plan, t).await;
    }
    if settle_secs > 0 {
        eprintln!("crius-bench: letting the daemons settle for {settle_secs} s");
        tokio::time::sleep(std::time::Duration::from_secs(settle_secs)).await;
        report.note(format!("RSS at the end read after {settle_secs} s idle"));
    }
    for ((p, at_start), warm) in peers.iter().zip(started_rss).zip(warm_rss) {
        report.note(format!(
            "{} daemon RSS in KiB after start: {at_start}, after one pod+container lifecycle: \
             {warm}, at the end: {}",
            p.name,
            rss_kib(p.pid())
        ));
    }
    // Reverse order: containerd (and its shims) first.
    while let Some(p) = peers.pop() {
        drop(p);
    }
    Ok(ok)
}

/// `VmRSS` of `pid` in KiB with its split: anonymous (the daemon's own heap, stacks and
/// arenas) and file-backed (the pages of its binary and libraries that were mapped in, shared
/// and clean); `?` when unreadable.
fn rss_kib(pid: u32) -> String {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return "?".into();
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    format!(
        "{} (anon {}, file {})",
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:")
    )
}
