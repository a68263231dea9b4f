//! `regionkv node --status-addr`: documented in `regionkv node --help`, and a node
//! process started with it answers `GET /metrics` (Prometheus text) and `GET /health`
//! over HTTP, as `curl` would ask.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{Procs, free_addrs, wait_for};

/// One HTTP/1.0 GET: the status code and body, `None` if nothing listens yet.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_owned()))
}

#[test]
fn node_help_documents_the_status_address() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_regionkv")).args(["node", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--status-addr <IP:PORT>"), "{help}");
    assert!(help.contains("/metrics") && help.contains("/health"), "{help}");
}

#[test]
fn a_node_process_serves_metrics_and_health_at_its_status_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Procs::new(dir.path(), 1);
    let status = free_addrs(1)[0];
    procs.start_with(1, &["--status-addr", &status.to_string()]);
    let mut health = None;
    wait_for("the status address", Duration::from_secs(30), || {
        health = get(status, "/health");
        health.is_some()
    });
    assert_eq!(health, Some((200, "serving\n".to_owned())), "{}", procs.logs());
    let (code, metrics) = get(status, "/metrics").expect("an answer");
    assert_eq!(code, 200);
    assert!(metrics.contains("# TYPE regionkv_write_latency_seconds histogram"), "{metrics}");
    assert!(metrics.contains("regionkv_regions{store=\"1\"} 1"), "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    procs.stop_all_by_stdin();
}
