//! The `regionkv` command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// regionkv: an embeddable, Raft-replicated, region-sharded key-value engine.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the end-to-end demo on a temporary directory and verify it.
    Demo {
        /// Directory to run in (default: a temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Concurrent writer threads.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Records to append to the bare log.
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// Keys to write to the cluster.
        #[arg(long, default_value_t = 20_000)]
        keys: u64,
        /// Concurrent cluster clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
    },
    /// Measure a layer against the disk's own limits, in one run.
    Bench {
        #[command(subcommand)]
        what: BenchTarget,
    },
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Engine apply, reads, memory and checkpoints next to a bare skip list and the disk.
    Engine {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Directory on the disk to measure (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Fewer keys (100 k instead of 1 M): a quick look, not the reference figures.
        #[arg(long)]
        quick: bool,
    },
    /// Replicated puts on 3 stores in this process (1, 16, 64 clients) next to the bare WAL.
    Cluster {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Directory on the disk to measure (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per figure.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Client-thread counts to measure (default: 1, 16 and 64).
        #[arg(long, value_delimiter = ',')]
        clients: Vec<usize>,
    },
    /// Puts with 1 to 10,000 regions per store, idle CPU, split and merge latency.
    Regions {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Directory on the disk to measure (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Seconds the idle CPU is measured over.
        #[arg(long, default_value_t = 10.0)]
        idle_seconds: f64,
        /// Regions per store to measure (default: 1, 100, 1000, 10000).
        #[arg(long, value_delimiter = ',')]
        regions: Vec<usize>,
    },
    /// Group-commit appends (1, 4, 16, 64 writers) next to raw fdatasync and bandwidth.
    Wal {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Directory on the disk to measure (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per figure.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

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
        Command::Demo { dir, writers, records, keys, clients } => {
            let dir = bench_dir(dir)?;
            let options = regionkv::demo::DemoOptions {
                writers,
                records,
                keys,
                clients,
                ..regionkv::demo::DemoOptions::new(dir.path())
            };
            regionkv::demo::run(&options, &mut std::io::stdout())?;
        }
        Command::Bench { what: BenchTarget::Engine { json, dir, quick } } => {
            let dir = bench_dir(dir)?;
            let report = regionkv::bench::engine::run(dir.path(), quick)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                report.print_table();
            }
        }
        Command::Bench { what: BenchTarget::Cluster { json, dir, seconds, clients } } => {
            let dir = bench_dir(dir)?;
            let clients = if clients.is_empty() {
                regionkv::bench::cluster::CLIENTS.to_vec()
            } else {
                clients
            };
            let report = regionkv::bench::cluster::run(dir.path(), seconds, &clients)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                report.print_table();
            }
        }
        Command::Bench {
            what: BenchTarget::Regions { json, dir, seconds, idle_seconds, regions },
        } => {
            let dir = bench_dir(dir)?;
            let regions = if regions.is_empty() {
                regionkv::bench::regions::REGIONS.to_vec()
            } else {
                regions
            };
            let report =
                regionkv::bench::regions::run(dir.path(), seconds, idle_seconds, &regions)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                report.print_table();
            }
        }
        Command::Bench { what: BenchTarget::Wal { json, dir, seconds } } => {
            let dir = bench_dir(dir)?;
            let report = regionkv::bench::wal::run(dir.path(), seconds)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                report.print_table();
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regionkv: {e}");
            ExitCode::FAILURE
        }
    }
}
