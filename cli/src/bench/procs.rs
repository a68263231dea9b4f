//! Three `regionkv node` processes on 127.0.0.1 for `regionkv bench cluster`: this
//! binary started again (`std::env::current_exe`), each node with its data dir and log
//! in the bench's directory, and their CPU time read from /proc.
//!
//! Every node runs with `--stop-on-stdin-eof`, so it stops when the bench closes its
//! stdin (`NodeProcs::stop`), and also when the bench dies before it could: the pipe
//! closes then too. Dropping `NodeProcs` kills (SIGKILL) whatever still runs, so an
//! error anywhere in the bench leaves no node behind.

use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regionkv::{Client, ClientOptions, ClusterId};

/// The cluster id the bench's nodes share.
pub const CLUSTER: ClusterId = ClusterId(13);
/// The bench cluster's secret (a throwaway: the nodes listen on loopback only).
const SECRET: &str = "regionkv bench cluster secret, loopback only";
/// How long a node may take to stop after its stdin closes before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// `USER_HZ`: the unit of /proc's CPU times on every Linux architecture we build for.
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// CPU time (user + system, every thread, in µs) process `pid` used so far, from
/// `/proc/<pid>/stat` (`"self"` for this process). 10 ms resolution.
pub fn cpu_us(pid: &str) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or_else(|| {
            io::Error::other(format!("/proc/{pid}/stat has no CPU time field {i}: {stat:?}"))
        })
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    Ok((ticks(11)? + ticks(12)?) * (1_000_000 / CLOCK_TICKS_PER_SECOND))
}

/// Three running nodes of one new cluster; killed when dropped.
pub struct NodeProcs {
    dir: PathBuf,
    addrs: Vec<SocketAddr>,
    children: Vec<Child>,
    insecure: bool,
}

impl Drop for NodeProcs {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl NodeProcs {
    /// Starts three nodes of a new cluster (each with `--bootstrap`, its data dir and
    /// log in `dir`) and waits until each listens; with plaintext links if `insecure`.
    pub fn start(dir: &Path, tick_interval_ms: u64, insecure: bool) -> io::Result<NodeProcs> {
        std::fs::create_dir_all(dir)?;
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, SECRET)?;
        let exe = std::env::current_exe()?;
        let mut procs = NodeProcs {
            dir: dir.to_path_buf(),
            addrs: free_addrs(3)?,
            children: Vec::new(),
            insecure,
        };
        for id in 1..=procs.addrs.len() {
            let log = std::fs::File::create(procs.log(id))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("node")
                .args(["--id", &id.to_string(), "--bootstrap", "--stop-on-stdin-eof"])
                .arg("--data-dir")
                .arg(dir.join(format!("data-{id}")))
                .args(["--listen", &procs.addrs[id - 1].to_string()])
                .args(["--cluster-id", &CLUSTER.0.to_string()])
                .arg("--secret-file")
                .arg(&secret_file)
                .args(["--tick-interval-ms", &tick_interval_ms.to_string()]);
            if insecure {
                cmd.arg("--insecure");
            }
            for (i, addr) in procs.addrs.iter().enumerate() {
                if i + 1 != id {
                    cmd.args(["--peer", &format!("{}={addr}", i + 1)]);
                }
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .env("RUST_LOG", "warn")
                .spawn()?;
            let stdout = child.stdout.take();
            procs.children.push(child);
            // The first line says the node listens; an early exit closes stdout instead.
            let mut line = String::new();
            if let Some(stdout) = stdout {
                BufReader::new(stdout).read_line(&mut line)?;
            }
            if !line.contains("listening") {
                return Err(io::Error::other(format!(
                    "regionkv node {id} did not start (its log: {}): {}",
                    procs.log(id).display(),
                    procs.log_tail(id)
                )));
            }
        }
        Ok(procs)
    }

    /// A client of the cluster (every node's address).
    pub fn client(&self) -> io::Result<Client> {
        let options = ClientOptions::insecure(self.insecure);
        Client::connect_with(&self.addrs, CLUSTER, SECRET, &options).map_err(io::Error::other)
    }

    /// CPU time the three nodes used so far, in µs (see [`cpu_us`]).
    pub fn cpu_us(&self) -> io::Result<u64> {
        self.children.iter().map(|c| cpu_us(&c.id().to_string())).sum()
    }

    /// Closes every node's stdin (a clean stop) and waits for each; a node that does
    /// not stop in time is killed and reported.
    pub fn stop(mut self) -> io::Result<()> {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        let mut failed = Vec::new();
        for (i, child) in self.children.iter_mut().enumerate() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            // Bounded by the deadline.
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            match status {
                Some(status) if status.success() => {}
                Some(status) => failed.push(format!("node {} exited with {status}", i + 1)),
                None => failed.push(format!("node {} did not stop; killed", i + 1)),
            }
        }
        self.children.clear();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(format!("{} (logs in {})", failed.join("; "), self.dir.display())))
        }
    }

    fn log(&self, id: usize) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    fn log_tail(&self, id: usize) -> String {
        let text = std::fs::read_to_string(self.log(id)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(10).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// Three loopback addresses that were free a moment ago.
fn free_addrs(n: usize) -> io::Result<Vec<SocketAddr>> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<io::Result<_>>()?;
    listeners.iter().map(TcpListener::local_addr).collect()
}
