//! The `regionkv` command-line tool.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::ops::Bound;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use regionkv::engine::{RegionId, StoreId};
use regionkv::{Client, ClusterId, Node, NodeConfig};

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
    /// Run one node of a cluster (one store; TCP to its peers; clients on the same
    /// address) until SIGTERM or SIGINT (or, with --stop-on-stdin-eof, stdin closing).
    Node(NodeArgs),
    /// Talk to a running cluster over the client protocol.
    Client(ClientArgs),
}

/// `regionkv node`: settings from a TOML file (--config), each overridden by its flag.
#[derive(Args)]
struct NodeArgs {
    /// A TOML file with any of `store_id`, `data_dir`, `listen`, `cluster_id`, `secret`
    /// or `secret_file`, `tick_interval_ms`, and a `[peers]` table of "ID" = "IP:PORT".
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's store id (1, 2, ...).
    #[arg(long)]
    id: Option<u64>,
    /// Where the store keeps its files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on, for stores and clients alike (IP:PORT).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A peer store, as ID=IP:PORT (repeat for each; replaces the file's peers).
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(u64, SocketAddr)>,
    /// The cluster's id (default 1).
    #[arg(long)]
    cluster_id: Option<u64>,
    #[command(flatten)]
    secret: SecretArgs,
    /// Raft tick interval in milliseconds (default 50).
    #[arg(long)]
    tick_interval_ms: Option<u64>,
    /// Also stop (cleanly) when standard input reaches its end: for supervisors and
    /// tests that own the node's stdin.
    #[arg(long)]
    stop_on_stdin_eof: bool,
}

/// The cluster secret, from a flag or a file.
#[derive(Args)]
struct SecretArgs {
    /// The cluster secret (at least 16 bytes); prefer --secret-file.
    #[arg(long)]
    secret: Option<String>,
    /// A file holding the cluster secret (a trailing newline is ignored).
    #[arg(long)]
    secret_file: Option<PathBuf>,
}

/// `regionkv client`.
#[derive(Args)]
struct ClientArgs {
    /// A node's address (IP:PORT); repeat or separate with commas for more.
    #[arg(long, value_delimiter = ',', required = true)]
    addr: Vec<SocketAddr>,
    /// The cluster's id (default 1).
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    #[command(flatten)]
    secret: SecretArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    op: ClientOp,
}

#[derive(Subcommand)]
enum ClientOp {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY.
    Get { key: String },
    /// Remove KEY.
    Delete { key: String },
    /// Print up to --limit pairs from --start (inclusive) to --end (exclusive).
    Scan {
        #[arg(long, default_value = "")]
        start: String,
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Split the region holding KEY at KEY.
    Split { key: String },
    /// Merge region RIGHT into its left neighbour LEFT.
    Merge { left: u64, right: u64 },
    /// Print the region table.
    Regions,
    /// Print every store's replicas: roles, terms, indexes.
    Status,
}

fn parse_peer(s: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) = s.split_once('=').ok_or("expected ID=IP:PORT")?;
    let id = id.trim().parse().map_err(|e| format!("bad store id {id:?}: {e}"))?;
    let addr = addr.trim().parse().map_err(|e| format!("bad address {addr:?}: {e}"))?;
    Ok((id, addr))
}

/// The TOML file of `regionkv node --config`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    store_id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    cluster_id: Option<u64>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    tick_interval_ms: Option<u64>,
    #[serde(default)]
    peers: BTreeMap<String, SocketAddr>,
}

fn read_secret(secret: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>, String> {
    match (secret, file) {
        (Some(s), _) => Ok(s.into_bytes()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| format!("cannot read the secret file {}: {e}", f.display()))?;
            Ok(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
        }
        (None, None) => Err("no cluster secret: give --secret-file (or --secret)".into()),
    }
}

fn node_config(args: NodeArgs) -> Result<(NodeConfig, bool), String> {
    let file: NodeFile = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => NodeFile::default(),
    };
    let id = args.id.or(file.store_id).ok_or("no store id: give --id")?;
    let data_dir = args.data_dir.or(file.data_dir).ok_or("no data directory: give --data-dir")?;
    let listen = args.listen.or(file.listen).ok_or("no listen address: give --listen")?;
    let cluster = args.cluster_id.or(file.cluster_id).unwrap_or(1);
    let secret = if args.secret.secret.is_some() || args.secret.secret_file.is_some() {
        read_secret(args.secret.secret, args.secret.secret_file)?
    } else {
        read_secret(file.secret, file.secret_file)?
    };
    let peers: Vec<(u64, SocketAddr)> = if args.peers.is_empty() {
        file.peers
            .into_iter()
            .map(|(id, addr)| {
                id.parse().map(|id| (id, addr)).map_err(|e| format!("bad peer id {id:?}: {e}"))
            })
            .collect::<Result<_, _>>()?
    } else {
        args.peers
    };
    let mut config = NodeConfig::new(StoreId(id), data_dir, listen, ClusterId(cluster), secret);
    for (peer, addr) in peers {
        config = config.peer(StoreId(peer), addr);
    }
    if let Some(ms) = args.tick_interval_ms.or(file.tick_interval_ms) {
        config.tick_interval = Duration::from_millis(ms);
    }
    Ok((config, args.stop_on_stdin_eof))
}

/// Runs a node until SIGTERM or SIGINT (or stdin's end), then shuts it down in order.
fn run_node(args: NodeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (config, stop_on_stdin_eof) = node_config(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    if stop_on_stdin_eof {
        let stop = stop.clone();
        std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            // Bounded by stdin: ends at its end or at an error.
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            stop.store(true, Ordering::SeqCst);
        })?;
    }
    let id = config.store_id;
    let node = Node::open(config)?;
    say(&format!("regionkv node {id} listening on {}", node.local_addr()));
    // Bounded by the stop flag; each turn sleeps.
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Whoever started the node may have stopped reading its stdout: these lines are
    // best effort (the log on stderr has them too).
    say(&format!("regionkv node {id} stopping"));
    node.shutdown()?;
    say(&format!("regionkv node {id} stopped"));
    Ok(())
}

/// Prints a line to stdout, ignoring a closed pipe.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn region_json(r: &regionkv::engine::Region) -> serde_json::Value {
    serde_json::json!({
        "id": r.id.0,
        "start": show(&r.start),
        "end": r.end.as_deref().map(show),
        "version": r.epoch.version,
        "conf_ver": r.epoch.conf_ver,
        "stores": r.peers.iter().map(|p| p.store.0).collect::<Vec<_>>(),
    })
}

fn region_line(r: &regionkv::engine::Region) -> String {
    let end = r.end.as_deref().map_or_else(|| "+inf".to_string(), |e| format!("{:?}", show(e)));
    format!(
        "region {} [{:?}, {end}) epoch {}/{}",
        r.id,
        show(&r.start),
        r.epoch.version,
        r.epoch.conf_ver
    )
}

/// A latency or size distribution as JSON: count, mean, p50, p99, max.
fn histogram_json(h: &regionkv::wal::HistogramSnapshot) -> serde_json::Value {
    serde_json::json!({
        "count": h.count(),
        "mean": h.mean(),
        "p50": h.p50(),
        "p99": h.p99(),
        "max": h.max(),
    })
}

fn metrics_json(m: &regionkv::StoreMetrics) -> serde_json::Value {
    serde_json::json!({
        "regions": m.regions,
        "leaders": m.leaders,
        "hibernating": m.hibernating,
        "applied_lag_total": m.applied_lag_total,
        "applied_lag_max": m.applied_lag_max,
        "write_latency_us": histogram_json(&m.write_latency_us),
        "writes_proposed": m.writes_proposed,
        "entries_proposed": m.entries_proposed,
        "writes_per_entry": m.writes_per_entry(),
        "apply_rounds": m.apply.rounds,
        "wal": {
            "records": m.wal.records,
            "groups": m.wal.groups,
            "fsyncs": m.wal.fsyncs,
            "bytes_written": m.wal.bytes_written,
            "fsync_latency_us": histogram_json(&m.wal.fsync_latency_us),
            "group_records": histogram_json(&m.wal.group_records),
        },
    })
}

fn print_metrics(m: &regionkv::StoreMetrics) {
    let (w, f, g) = (&m.write_latency_us, &m.wal.fsync_latency_us, &m.wal.group_records);
    println!(
        "  regions {} leaders {} hibernating {} applied lag total {} max {}",
        m.regions, m.leaders, m.hibernating, m.applied_lag_total, m.applied_lag_max
    );
    println!(
        "  writes {} latency us p50 {} p99 {} max {}; {} entries ({:.1} writes/entry)",
        w.count(),
        w.p50(),
        w.p99(),
        w.max(),
        m.entries_proposed,
        m.writes_per_entry()
    );
    println!(
        "  wal fsyncs {} latency us p50 {} p99 {} max {}; groups {} records/group p50 {} max {}",
        m.wal.fsyncs,
        f.p50(),
        f.p99(),
        f.max(),
        m.wal.groups,
        g.p50(),
        g.max()
    );
}

/// Prints every store's replicas and metrics (unless `json`); returns them as JSON.
fn status_output(stores: &[regionkv::StoreStatus], json: bool) -> serde_json::Value {
    if !json {
        for s in stores {
            println!("store {} ({} replicas)", s.store, s.peers.len());
            for p in &s.peers {
                println!(
                    "  region {} {:?} term {} commit {} applied {} last {}{}",
                    p.region.id,
                    p.role,
                    p.term,
                    p.commit,
                    p.applied,
                    p.last_index,
                    if p.hibernated { " hibernated" } else { "" }
                );
            }
            match &s.metrics {
                Some(m) => print_metrics(m),
                None => println!("  metrics: not reported (an older node)"),
            }
        }
    }
    serde_json::json!(
        stores
            .iter()
            .map(|s| serde_json::json!({
                "store": s.store.0,
                "replicas": s.peers.iter().map(|p| serde_json::json!({
                    "region": p.region.id.0,
                    "role": format!("{:?}", p.role),
                    "term": p.term,
                    "commit": p.commit,
                    "applied": p.applied,
                    "last_index": p.last_index,
                    "hibernated": p.hibernated,
                })).collect::<Vec<_>>(),
                "metrics": s.metrics.as_ref().map(metrics_json),
            }))
            .collect::<Vec<_>>()
    )
}

fn run_client(args: ClientArgs) -> Result<(), Box<dyn std::error::Error>> {
    let secret = read_secret(args.secret.secret, args.secret.secret_file)?;
    let client = Client::connect(&args.addr, ClusterId(args.cluster_id), secret)?;
    let db = client.db();
    let json = args.json;
    let out = match args.op {
        ClientOp::Put { key, value } => {
            db.put(&key, &value)?;
            serde_json::json!({"ok": true})
        }
        ClientOp::Delete { key } => {
            db.delete(&key)?;
            serde_json::json!({"ok": true})
        }
        ClientOp::Get { key } => {
            let value = db.get(&key)?;
            if !json {
                match &value {
                    Some(v) => println!("{}", show(v)),
                    None => println!("(not found)"),
                }
            }
            serde_json::json!({"key": key, "value": value.as_deref().map(show)})
        }
        ClientOp::Scan { start, end, limit } => {
            let end = end.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            let rows = db.scan((Bound::Included(&start), end), limit)?;
            if !json {
                for (k, v) in &rows {
                    println!("{}\t{}", show(k), show(v));
                }
            }
            serde_json::json!(
                rows.iter().map(|(k, v)| serde_json::json!([show(k), show(v)])).collect::<Vec<_>>()
            )
        }
        ClientOp::Split { key } => {
            let parts = client.split(&key)?;
            if !json {
                for r in &parts {
                    println!("{}", region_line(r));
                }
            }
            serde_json::json!(parts.iter().map(region_json).collect::<Vec<_>>())
        }
        ClientOp::Merge { left, right } => {
            let merged = client.merge(RegionId(left), RegionId(right))?;
            if !json {
                println!("{}", region_line(&merged));
            }
            region_json(&merged)
        }
        ClientOp::Regions => {
            let regions = client.regions()?;
            if !json {
                for info in &regions {
                    let leader = info.leader.map_or_else(|| "none".to_string(), |l| l.to_string());
                    println!("{} leader store {leader}", region_line(&info.region));
                }
            }
            serde_json::json!(
                regions
                    .iter()
                    .map(|i| {
                        let mut v = region_json(&i.region);
                        v["leader"] = serde_json::json!(i.leader.map(|l| l.0));
                        v
                    })
                    .collect::<Vec<_>>()
            )
        }
        ClientOp::Status => status_output(&client.status(), json),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    client.close();
    Ok(())
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
        Command::Node(args) => run_node(args)?,
        Command::Client(args) => run_client(args)?,
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
