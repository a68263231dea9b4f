//! The `regionkv` command-line tool: `demo` (the verified end-to-end run), `bench`,
//! `node` (one node of a cluster) and `client` (requests to a running cluster).

mod args;
mod bench;
mod client_cmd;
mod demo;
mod dup_cmd;
mod health_cmd;
mod node_cmd;
mod txn_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{BenchTarget, Cli, Command};
use crate::bench::Report as _;

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
                ..demo::DemoOptions::new(dir.path())
            };
            demo::run(&options, &mut std::io::stdout())?;
        }
        Command::Bench { what: BenchTarget::Engine { out, quick } } => {
            let dir = bench_dir(out.dir)?;
            let report = bench::engine::run(dir.path(), quick)?;
            report.print(out.json)?;
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
            let dir = bench_dir(out.dir)?;
            let clients =
                if clients.is_empty() { bench::cluster::CLIENTS.to_vec() } else { clients };
            let options = bench::cluster::Options {
                seconds,
                tcp: !in_process_only,
                wal_baseline: !no_wal_baseline,
                insecure,
            };
            let report = bench::cluster::run(dir.path(), &clients, &options)?;
            report.print(out.json)?;
        }
        Command::Bench { what: BenchTarget::Kv { out, seconds, threads, puts_only } } => {
            let dir = bench_dir(out.dir)?;
            let threads = if threads.is_empty() { bench::kv::THREADS.to_vec() } else { threads };
            let report = bench::kv::run(dir.path(), seconds, &threads, !puts_only)?;
            report.print(out.json)?;
        }
        Command::Bench { what: BenchTarget::Regions { out, seconds, idle_seconds, regions } } => {
            let dir = bench_dir(out.dir)?;
            let regions =
                if regions.is_empty() { bench::regions::REGIONS.to_vec() } else { regions };
            let report = bench::regions::run(dir.path(), seconds, idle_seconds, &regions)?;
            report.print(out.json)?;
        }
        Command::Bench { what: BenchTarget::Txn { out, seconds, clients } } => {
            let dir = bench_dir(out.dir)?;
            let report = bench::txn::run(dir.path(), seconds, clients)?;
            report.print(out.json)?;
        }
        Command::Bench { what: BenchTarget::Wal { out, seconds } } => {
            let dir = bench_dir(out.dir)?;
            let report = bench::wal::run(dir.path(), seconds)?;
            report.print(out.json)?;
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regionkv: {e}");
            ExitCode::FAILURE
        }
    }
}
