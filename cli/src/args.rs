//! The command line of `regionkv`: every subcommand, flag and argument, as clap parses
//! them. The commands themselves live in `node_cmd`, `client_cmd`, `demo` and `bench`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// regionkv: an embeddable, Raft-replicated, region-sharded key-value engine.
#[derive(Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct NodeArgs {
    /// A TOML file with any of `store_id`, `data_dir`, `listen`, `status_addr`,
    /// `cluster_id`, `secret` or `secret_file`, `client_secret_file`, `insecure`,
    /// `tick_interval_ms`,
    /// `initial_cluster_state` ("new" or "existing"), and a `[peers]` table of
    /// "ID" = "IP:PORT".
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// If the data dir holds no store: bootstrap a new cluster of this node and its
    /// peers (give it to each first node, on its first start only).
    #[arg(long, conflicts_with = "join")]
    pub(crate) bootstrap: bool,
    /// If the data dir holds no store: start empty and wait to be added to the running
    /// cluster (`regionkv client store add ID ADDR`).
    #[arg(long)]
    pub(crate) join: bool,
    /// This node's store id (1, 2, ...).
    #[arg(long)]
    pub(crate) id: Option<u64>,
    /// Where the store keeps its files.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address to listen on, for stores and clients alike (IP:PORT).
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Serve HTTP at this address (IP:PORT): `GET /metrics` (Prometheus text) and
    /// `GET /health` (200 while the store serves, 503 with the reason otherwise).
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) status_addr: Option<SocketAddr>,
    /// A peer store, as ID=IP:PORT (repeat for each; replaces the file's peers).
    #[arg(long = "peer", value_parser = parse_peer)]
    pub(crate) peers: Vec<(u64, SocketAddr)>,
    /// The cluster's id (default 1).
    #[arg(long)]
    pub(crate) cluster_id: Option<u64>,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
    #[command(flatten)]
    pub(crate) link: LinkArgs,
    /// Raft tick interval in milliseconds (default 50).
    #[arg(long)]
    pub(crate) tick_interval_ms: Option<u64>,
    /// Also stop (cleanly) when standard input reaches its end: for supervisors and
    /// tests that own the node's stdin.
    #[arg(long)]
    pub(crate) stop_on_stdin_eof: bool,
    #[command(flatten)]
    pub(crate) health: HealthArgs,
}

/// `regionkv node`'s health monitor settings (the monitor runs on the node whose store
/// leads the cluster directory).
#[derive(Args)]
pub(crate) struct HealthArgs {
    /// The health monitor declares a store down after this many seconds without a
    /// report (default 30).
    #[arg(long = "health-down-after", value_name = "SECS")]
    pub(crate) down_after: Option<f64>,
    /// The health monitor declares a store dead, and replaces its replicas, after this
    /// many seconds without a report, corroborated by its peers (default 300).
    #[arg(long = "health-dead-after", value_name = "SECS")]
    pub(crate) dead_after: Option<f64>,
    /// The health monitor plans repairs and reports them, but carries none out.
    #[arg(long = "health-dry-run")]
    pub(crate) dry_run: bool,
}

/// `regionkv node`'s link settings: the clients' own secret, and plaintext links.
#[derive(Args)]
pub(crate) struct LinkArgs {
    /// A file holding the clients' secret (at least 16 bytes, not the cluster
    /// secret): clients prove it instead of the cluster secret, and cannot act as a
    /// store. Without it, clients use the cluster secret.
    #[arg(long, value_name = "FILE")]
    pub(crate) client_secret_file: Option<PathBuf>,
    /// Plaintext links, for benchmarks only: frames between stores and with clients
    /// go unencrypted and unauthenticated. Peers and clients must run it too.
    #[arg(long)]
    pub(crate) insecure: bool,
}

/// The cluster secret, from a flag or a file.
#[derive(Args)]
pub(crate) struct SecretArgs {
    /// The cluster secret (at least 16 bytes); prefer --secret-file.
    #[arg(long)]
    pub(crate) secret: Option<String>,
    /// A file holding the cluster secret (a trailing newline is ignored).
    #[arg(long)]
    pub(crate) secret_file: Option<PathBuf>,
}

/// `regionkv client`.
#[derive(Args)]
pub(crate) struct ClientArgs {
    /// A node's address (IP:PORT); repeat or separate with commas for more.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) addr: Vec<SocketAddr>,
    /// The cluster's id (default 1).
    #[arg(long, default_value_t = 1)]
    pub(crate) cluster_id: u64,
    /// The secret to prove (--secret-file): the nodes' client secret if they have
    /// one (--client-secret-file), else the cluster secret.
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
    /// Plaintext links, to nodes that run --insecure (benchmarks only).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) op: ClientOp,
}

/// What `regionkv client` asks for.
#[derive(Subcommand)]
pub(crate) enum ClientOp {
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
    /// Add or remove a store (how a store whose disk was lost is replaced).
    Store {
        #[command(subcommand)]
        op: StoreOp,
    },
    /// Print the health monitor's analyses: problems with their priority, what could
    /// not be concluded for lack of information, planned repairs, each store's liveness.
    Health {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        what: Option<HealthOp>,
    },
    /// The cluster version: what every store supports, and raising it.
    Upgrade {
        #[command(subcommand)]
        op: UpgradeOp,
    },
    /// Transactions left in doubt, and the recovery daemon that finishes them.
    Txn {
        #[command(subcommand)]
        op: TxnOp,
    },
    /// Duplication of a key range to another cluster.
    Dup {
        #[command(subcommand)]
        op: DupOp,
    },
}

/// What `regionkv client dup` does.
#[derive(Clone, Subcommand)]
pub(crate) enum DupOp {
    /// Add a duplication of a key range (default: every key) to another cluster;
    /// prints its id.
    Add {
        /// Some of the follower cluster's node addresses (`host:port[,host:port]`).
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// The follower cluster's id.
        #[arg(long)]
        to_cluster_id: u64,
        /// A file holding the follower cluster's secret.
        #[arg(long)]
        to_secret_file: PathBuf,
        /// The first key duplicated.
        #[arg(long, default_value = "")]
        start: String,
        /// The key past the last one duplicated (default: unbounded).
        #[arg(long)]
        end: Option<String>,
        /// Do not seed the follower with an image of the range (it holds it already):
        /// ship only the log from now on.
        #[arg(long)]
        no_seed: bool,
    },
    /// Print every duplication and its status.
    List,
    /// Print one duplication, with each source region's state.
    Status {
        /// The duplication's id.
        id: u64,
    },
    /// Pause a duplication that ships its log (the regions keep their log for it).
    Pause {
        /// The duplication's id.
        id: u64,
    },
    /// Resume a paused duplication.
    Resume {
        /// The duplication's id.
        id: u64,
    },
    /// Remove a duplication (every region releases the log it kept for it).
    Remove {
        /// The duplication's id.
        id: u64,
    },
    /// Seed a broken duplication again (a new incarnation).
    Reseed {
        /// The duplication's id.
        id: u64,
    },
    /// Fence a duplication's source range for its cutover (cluster version 8): writes
    /// to the range are refused from then on; the log up to the fence still ships.
    Fence {
        /// The duplication's id.
        id: u64,
    },
}

/// What `regionkv client txn` does.
#[derive(Clone, Subcommand)]
pub(crate) enum TxnOp {
    /// Print the locks and transaction records of every region, from its leader.
    List {
        /// Only those past their TTL and undecided.
        #[arg(long)]
        in_doubt: bool,
        /// Only those at least this old (`500ms`, `30s`, `5m`, `1h`).
        #[arg(long, value_parser = crate::txn_cmd::parse_age)]
        older_than: Option<std::time::Duration>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one recovery turn now on every node (gates first) and print what it did.
    Recover {
        /// Only this region (on the node that leads it).
        #[arg(long)]
        region: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a transaction's outcome, from its record on its primary key's region.
    Status {
        /// The transaction's id.
        txn_id: u64,
        /// Its primary key (its smallest key).
        primary_key: String,
    },
}

/// What `regionkv client upgrade` does.
#[derive(Clone, Copy, Subcommand)]
pub(crate) enum UpgradeOp {
    /// Print the active cluster version and, per store, the version it runs at and the
    /// newest it supports.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Raise the cluster version (refused unless every store supports it), so that
    /// the command kinds it introduced may be used. Cannot be undone.
    Finalize {
        /// The version to raise it to (default: the newest the node that drives it
        /// runs).
        #[arg(long)]
        to: Option<u32>,
    },
}

/// What `regionkv client health` prints besides the current analyses.
#[derive(Clone, Copy, Subcommand)]
pub(crate) enum HealthOp {
    /// The repairs the monitor carried out, and why (oldest first).
    Audit {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What `regionkv client store` changes.
#[derive(Subcommand)]
pub(crate) enum StoreOp {
    /// Add store ID, listening at ADDR, to every region: a learner filled by a
    /// snapshot, then a voter. Start its node with --join first.
    Add { id: u64, addr: SocketAddr },
    /// Remove store ID from every region (before adding back a store whose disk was
    /// lost).
    Remove { id: u64 },
    /// Make store ID, listening at ADDR, a member of no region: a spare the health
    /// monitor watches and may place replicas on. Start its node with --join first.
    AddMember { id: u64, addr: SocketAddr },
}

/// Parses `--peer ID=IP:PORT`.
pub(crate) fn parse_peer(s: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) = s.split_once('=').ok_or("expected ID=IP:PORT")?;
    let id = id.trim().parse().map_err(|e| format!("bad store id {id:?}: {e}"))?;
    let addr = addr.trim().parse().map_err(|e| format!("bad address {addr:?}: {e}"))?;
    Ok((id, addr))
}

/// The cluster secret from `--secret`, else from the file `--secret-file` names.
pub(crate) fn read_secret(
    secret: Option<String>,
    file: Option<PathBuf>,
) -> Result<Vec<u8>, String> {
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

/// Where every bench runs and how it prints.
#[derive(Args)]
pub(crate) struct BenchOut {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Directory on the disk to measure (default: a temporary directory).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Also draw throughput and latency against the client count into this SVG file
    /// (benches that measure several counts: cluster, kv, regions, wal).
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
}

/// What `regionkv bench` measures.
#[derive(Subcommand)]
pub(crate) enum BenchTarget {
    /// Engine apply, reads, memory and checkpoints next to a bare skip list and the disk.
    Engine {
        #[command(flatten)]
        out: BenchOut,
        /// Fewer keys (100 k instead of 1 M): a quick look, not the reference figures.
        #[arg(long)]
        quick: bool,
    },
    /// Replicated puts and gets on 3 stores (1, 16, 64 clients), in this process and as
    /// three `regionkv node` processes over TCP, next to the bare WAL.
    Cluster {
        #[command(flatten)]
        out: BenchOut,
        /// Seconds per figure.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Client-thread counts to measure (default: 1, 16 and 64).
        #[arg(long, value_delimiter = ',')]
        clients: Vec<usize>,
        /// Skip the three node processes (the `_tcp` figures and the server CPU).
        #[arg(long)]
        in_process_only: bool,
        /// Skip the bare-WAL baseline (its two figures print as 0): a quicker run
        /// when only the cluster's own figures matter.
        #[arg(long)]
        no_wal_baseline: bool,
        /// The three node processes run plaintext links (`regionkv node --insecure`):
        /// to measure what sealed links cost.
        #[arg(long)]
        insecure: bool,
    },
    /// One store as an embedded key-value store: puts and gets (1, 2, 16, 64 threads),
    /// 1,000-key scans, fsyncs per put.
    Kv {
        #[command(flatten)]
        out: BenchOut,
        /// Seconds per figure.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Client-thread counts to measure (default: 1, 2, 16 and 64).
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Measure the puts only (no preload, gets or scans): for profiling the put
        /// path alone; the read figures print as 0.
        #[arg(long)]
        puts_only: bool,
    },
    /// Puts with 1 to 10,000 regions per store, idle CPU, split and merge latency.
    Regions {
        #[command(flatten)]
        out: BenchOut,
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
    /// Batches of two keys in one region (1PC) and in two (two-phase commit) at 64
    /// clients on three stores, next to single puts and two one-region batches.
    Txn {
        #[command(flatten)]
        out: BenchOut,
        /// Seconds per figure.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Client threads.
        #[arg(long, default_value_t = crate::bench::txn::CLIENTS)]
        clients: usize,
    },
    /// Group-commit appends (1, 4, 16, 64 writers) next to raw fdatasync and bandwidth.
    Wal {
        #[command(flatten)]
        out: BenchOut,
        /// Seconds per figure.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}
