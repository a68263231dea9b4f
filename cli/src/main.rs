//! The `regionkv` command-line tool: `demo` (the verified end-to-end run), `bench`,
//! `node` (one node of a cluster) and `client` (requests to a running cluster).

mod args;
mod bench;
mod client_cmd;
mod demo;
mod dup_cmd;
mod health_cmd;
mod node_cmd;
mod progress;
mod txn_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{BenchOut, BenchTarget, Cli, Command};

/// A fresh temporary directory, inside `dir` if given (removed when dropped).
fn bench_dir(dir: Option<PathBuf>) -> std::io::Result<tempfile::TempDir> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            tempfile::tempdir_in(dir)
        }
        None => tempfile::tempdir(),
    }
}

/// Prints a bench's report, and draws its curves if `--plot` asked.
fn emit<R: bench::Report>(report: &R, out: &BenchOut) -> Result<(), Box<dyn std::error::Error>> {
    report.print(out.json)?;
    if let Some(path) = &out.plot {
        let chart = report.chart().ok_or("this bench measures no count to plot against")?;
        bench::plot::draw(path, &chart)?;
        eprintln!("regionkv: plotted to {}", path.display());
    }
    Ok(())
}

/// Refuses `--plot` before a bench that has no curve runs (rather than after it).
fn no_curve(bench: &str, out: &BenchOut) -> Result<(), String> {
    match out.plot {
        Some(_) => Err(format!(
            "bench {bench} measures no client count: --plot is for cluster, kv, regions and wal"
        )),
        None => Ok(()),
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Node(args) => node_cmd::run_node(args)?,
        Command::Client(args) => client_cmd::run_client(args)?,
        Command::Demo { dir, writers, records, keys, clients } => {
            let dir = bench_dir(dir)?;
            let options = demo::DemoOptions {
                writers,
                records,
                keys,
                clients,
                progress: progress::Mode::for_stdout(),
                ..demo::DemoOptions::new(dir.path())
            };
            demo::run(&options, &mut std::io::stdout())?;
        }
        Command::Bench { what: BenchTarget::Engine { out, quick } } => {
            no_curve("engine", &out)?;
            let dir = bench_dir(out.dir.clone())?;
            let report = bench::engine::run(dir.path(), quick)?;
            emit(&report, &out)?;
        }
        Command::Bench {
            what:
                BenchTarget::Cluster {
                    out,
                    seconds,
                    clients,
                    in_process_only,
                    no_wal_baseline,
                    insecure,
                },
        } => {
            let dir = bench_dir(out.dir.clone())?;
            let clients =
                if clients.is_empty() { bench::cluster::CLIENTS.to_vec() } else { clients };
            let options = bench::cluster::Options {
                seconds,
                tcp: !in_process_only,
                wal_baseline: !no_wal_baseline,
                insecure,
            };
            let report = bench::cluster::run(dir.path(), &clients, &options)?;
            emit(&report, &out)?;
        }
        Command::Bench { what: BenchTarget::Kv { out, seconds, threads, puts_only } } => {
            let dir = bench_dir(out.dir.clone())?;
            let threads = if threads.is_empty() { bench::kv::THREADS.to_vec() } else { threads };
            let report = bench::kv::run(dir.path(), seconds, &threads, !puts_only)?;
            emit(&report, &out)?;
        }
        Command::Bench { what: BenchTarget::Regions { out, seconds, idle_seconds, regions } } => {
            let dir = bench_dir(out.dir.clone())?;
            let regions =
                if regions.is_empty() { bench::regions::REGIONS.to_vec() } else { regions };
            let report = bench::regions::run(dir.path(), seconds, idle_seconds, &regions)?;
            emit(&report, &out)?;
        }
        Command::Bench { what: BenchTarget::Txn { out, seconds, clients } } => {
            no_curve("txn", &out)?;
            let dir = bench_dir(out.dir.clone())?;
            let report = bench::txn::run(dir.path(), seconds, clients)?;
            emit(&report, &out)?;
        }
        Command::Bench { what: BenchTarget::Wal { out, seconds } } => {
            let dir = bench_dir(out.dir.clone())?;
            let report = bench::wal::run(dir.path(), seconds)?;
            emit(&report, &out)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Node(_)) {
        // A node logs to stderr; RUST_LOG overrides the level (default info).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    if matches!(cli.command, Command::Bench { .. }) {
        bench::load::show_progress(progress::Mode::for_stdout());
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regionkv: {e}");
            ExitCode::FAILURE
        }
    }
}
