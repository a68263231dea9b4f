//! Shared by the tests that run `regionkv node` processes: [`Procs`], three nodes on
//! loopback with data dirs in a temporary directory, killed when it is dropped.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code, reason = "each test binary uses a different part of these helpers")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regionkv::ClusterId;

pub const CLUSTER: ClusterId = ClusterId(9);
pub const SECRET: &str = "the secret of the process test cluster";

/// The node processes; every one still running is killed when this is dropped, so a
/// failing test leaves none behind.
pub struct Procs {
    pub dir: PathBuf,
    /// The cluster's id (its secret is in `dir/secret`).
    pub cluster: ClusterId,
    pub addrs: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
    /// Nodes started before: they restart from their files, without `--bootstrap`.
    started: BTreeSet<usize>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Procs {
    /// `n` nodes, none started yet, with their files and the secret file in `dir`.
    pub fn new(dir: &Path, n: usize) -> Procs {
        Procs::of_cluster(dir, n, CLUSTER, SECRET)
    }

    /// `n` nodes of cluster `cluster` with secret `secret`, none started yet.
    pub fn of_cluster(dir: &Path, n: usize, cluster: ClusterId, secret: &str) -> Procs {
        std::fs::write(dir.join("secret"), format!("{secret}\n")).unwrap();
        Procs {
            dir: dir.to_path_buf(),
            cluster,
            addrs: free_addrs(n),
            children: (0..n).map(|_| None).collect(),
            started: BTreeSet::new(),
        }
    }

    pub fn log(&self, id: usize) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// `regionkv node` for node `id` (1-based), without `--bootstrap` or `--join`.
    pub fn node_command(&self, id: usize) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_regionkv"));
        cmd.arg("node")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--listen", &self.addrs[id - 1].to_string()])
            .args(["--cluster-id", &self.cluster.0.to_string()])
            .arg("--secret-file")
            .arg(self.dir.join("secret"))
            .args(["--tick-interval-ms", "20", "--stop-on-stdin-eof"]);
        for (i, addr) in self.addrs.iter().enumerate() {
            if i + 1 != id {
                cmd.args(["--peer", &format!("{}={addr}", i + 1)]);
            }
        }
        cmd
    }

    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.dir.join(format!("data-{id}"))
    }

    /// Starts node `id` (with `--bootstrap` the first time) and waits until it listens.
    pub fn start(&mut self, id: usize) {
        let mut cmd = self.node_command(id);
        if self.started.insert(id) {
            cmd.arg("--bootstrap");
        }
        self.spawn(id, cmd);
    }

    /// Starts node `id` (with `--bootstrap` the first time) with `extra` flags, and
    /// waits until it listens.
    pub fn start_with(&mut self, id: usize, extra: &[&str]) {
        let mut cmd = self.node_command(id);
        if self.started.insert(id) {
            cmd.arg("--bootstrap");
        }
        cmd.args(extra);
        self.spawn(id, cmd);
    }

    /// Starts node `id` with `--join` and waits until it listens.
    pub fn join(&mut self, id: usize) {
        let mut cmd = self.node_command(id);
        cmd.arg("--join");
        self.spawn(id, cmd);
    }

    /// Runs `regionkv client` with `args` against every node.
    pub fn client(&self, args: &[&str]) -> std::process::Output {
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        Command::new(env!("CARGO_BIN_EXE_regionkv"))
            .arg("client")
            .args(["--addr", &addrs.join(",")])
            .args(["--cluster-id", &self.cluster.0.to_string()])
            .arg("--secret-file")
            .arg(self.dir.join("secret"))
            .args(args)
            .output()
            .expect("run regionkv client")
    }

    fn spawn(&mut self, id: usize, mut cmd: Command) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log(id)).unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .env("RUST_LOG", "info")
            .spawn()
            .expect("start regionkv node");
        // The first line says the node listens; an early exit closes stdout instead.
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.contains("listening"), "node {id} did not start: {line:?}\n{}", self.logs());
        self.children[id - 1] = Some(child);
    }

    /// True if node `id` runs (as far as this test knows).
    pub fn is_running(&self, id: usize) -> bool {
        self.children[id - 1].is_some()
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: usize) {
        let mut child = self.children[id - 1].take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// SIGKILLs every running node at once (each is sent its signal before any is
    /// reaped): the whole cluster loses power.
    pub fn kill_all(&mut self) {
        let mut killed = Vec::new();
        for child in &mut self.children {
            if let Some(mut child) = child.take() {
                child.kill().unwrap(); // SIGKILL
                killed.push(child);
            }
        }
        for mut child in killed {
            child.wait().unwrap();
        }
    }

    /// Closes every node's stdin and checks that each stops cleanly (exit status 0).
    pub fn stop_all_by_stdin(&mut self) {
        for id in 1..=self.addrs.len() {
            drop(self.children[id - 1].as_mut().unwrap().stdin.take());
        }
        for id in 1..=self.addrs.len() {
            let child = self.children[id - 1].as_mut().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(Instant::now() < deadline, "node {id} did not stop\n{}", self.logs());
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(status.success(), "node {id} exited with {status}\n{}", self.logs());
            self.children[id - 1] = None;
        }
    }

    /// The last lines of every node's log.
    pub fn logs(&self) -> String {
        (1..=self.addrs.len())
            .map(|id| {
                let text = std::fs::read_to_string(self.log(id)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- node {id} (last lines)\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `n` loopback addresses that were free a moment ago.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// Polls `done` until it holds; panics after `timeout` (a liveness bound, not a
/// measurement).
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
