//! `regionkv node`: one node of a cluster in this process, configured from a TOML file
//! and flags, until SIGTERM or SIGINT (or the end of stdin); then an ordered shutdown.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use regionkv::health::HealthConfig;
use regionkv::{ClusterId, InitialClusterState, Node, NodeConfig, StoreId};

use crate::args::{NodeArgs, read_secret};
use crate::progress::{Mode, Spinner};

/// The TOML file of `regionkv node --config`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    store_id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    status_addr: Option<SocketAddr>,
    cluster_id: Option<u64>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    client_secret_file: Option<PathBuf>,
    insecure: Option<bool>,
    tick_interval_ms: Option<u64>,
    /// The version GC's life time (`NodeConfig::gc_life_time`), in seconds.
    gc_life_time_s: Option<u64>,
    initial_cluster_state: Option<String>,
    #[serde(default)]
    peers: BTreeMap<String, SocketAddr>,
}

/// How the node starts if its data dir holds no store: the flags, else the file.
fn initial_state(
    bootstrap: bool,
    join: bool,
    file: Option<&str>,
) -> Result<Option<InitialClusterState>, String> {
    Ok(match (bootstrap, join, file) {
        (true, _, _) | (false, false, Some("new")) => Some(InitialClusterState::New),
        (false, true, _) | (false, false, Some("existing")) => Some(InitialClusterState::Existing),
        (false, false, None) => None,
        (false, false, Some(other)) => {
            return Err(format!(
                "initial_cluster_state is {other:?}: it must be \"new\" (bootstrap a new \
                 cluster) or \"existing\" (join a running one)"
            ));
        }
    })
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
    config.status_addr = args.status_addr.or(file.status_addr);
    if let Some(f) = args.link.client_secret_file.or(file.client_secret_file) {
        config.client_secret = Some(read_secret(None, Some(f))?);
    }
    config.insecure = args.link.insecure || file.insecure.unwrap_or(false);
    if let Some(ms) = args.tick_interval_ms.or(file.tick_interval_ms) {
        config.tick_interval = Duration::from_millis(ms);
    }
    if let Some(s) = file.gc_life_time_s {
        config.gc_life_time = Duration::from_secs(s);
    }
    config.initial_cluster_state =
        initial_state(args.bootstrap, args.join, file.initial_cluster_state.as_deref())?;
    config.health = health_config(
        (args.health.down_after, args.health.dead_after, args.health.dry_run),
        config.peers.len(),
    )?;
    Ok((config, args.stop_on_stdin_eof))
}

/// The health monitor's settings if a flag changes them: the defaults, with a
/// replication factor of this node's configured stores (at most 3), and the flags.
fn health_config(
    (down_after, dead_after, dry_run): (Option<f64>, Option<f64>, bool),
    peers: usize,
) -> Result<Option<HealthConfig>, String> {
    if down_after.is_none() && dead_after.is_none() && !dry_run {
        return Ok(None);
    }
    let secs = |flag: &str, s: f64| {
        Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{flag} must be a positive number of seconds, not {s}"))
    };
    let mut config =
        HealthConfig { replication_factor: (peers + 1).min(3), ..HealthConfig::default() };
    if let Some(s) = down_after {
        config.store_down_after = secs("--health-down-after", s)?;
    }
    if let Some(s) = dead_after {
        config.store_dead_after = secs("--health-dead-after", s)?;
    }
    if config.store_dead_after < config.store_down_after {
        return Err(format!(
            "--health-dead-after ({:?}) is shorter than the down timeout ({:?}): a store is \
             down before it is dead",
            config.store_dead_after, config.store_down_after
        ));
    }
    config.dry_run = dry_run;
    Ok(Some(config))
}

/// Runs a node until SIGTERM or SIGINT (or stdin's end), then shuts it down in order.
pub(crate) fn run_node(args: NodeArgs) -> Result<(), Box<dyn std::error::Error>> {
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
    // Opening recovers the store from its files (WAL replay, checkpoints): a spinner on
    // a terminal, else a line before and after, on stderr (stdout's first line says
    // where the node listens, and scripts wait for it).
    let mut log = std::io::stderr();
    let what = format!("regionkv node {id}: opening the store in {}", config.data_dir.display());
    let shown = Spinner::start(Mode::for_stdout(), &what, &mut log)?;
    let node = match Node::open(config) {
        Ok(node) => {
            shown.finish("ready", &mut log)?;
            node
        }
        Err(e) => {
            shown.finish("failed", &mut log)?;
            return Err(e.into());
        }
    };
    say(&format!("regionkv node {id} listening on {}", node.local_addr()));
    if let Some(status) = node.status_addr() {
        say(&format!("regionkv node {id} serves /metrics and /health on http://{status}"));
    }
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
