//! A node's status address over plain HTTP: `GET /metrics` is Prometheus (`OpenMetrics`)
//! text whose put counter and write-latency histogram grow with the puts, every family
//! typed and every histogram cumulative up to `+Inf`; `GET /health` is 200 while the
//! node serves and 503 with a one-line reason once it was told to shut down; other
//! paths are 404, other methods 405.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use regionkv::{ClusterId, Node};

mod common;

/// One HTTP/1.0 request (the server closes the connection after its answer):
/// the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("the status address accepts");
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("headers, then a body");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status line");
    (status, body.to_owned())
}

/// A sample line: its name, its labels, its value.
type Sample = (String, BTreeMap<String, String>, f64);

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",...} value` or `name value`; panics on anything else.
fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("value {v:?} of {line:?}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("labels of {line:?}"));
            let labels = body
                .split(',')
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{pair:?}"));
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    assert!(is_name(k), "label name {k:?} in {line:?}");
                    (k.to_owned(), v.unwrap_or_else(|| panic!("unquoted {pair:?}")).to_owned())
                })
                .collect();
            (name, labels)
        }
    };
    assert!(is_name(name), "metric name {name:?} in {line:?}");
    (name.to_owned(), labels, value)
}

/// Checks the exposition's shape and returns its samples: `# EOF` last, every sample
/// of a family announced by `# TYPE` before it, every histogram's buckets cumulative
/// in `le` order and ending at `+Inf` equal to its `_count`.
fn parse(text: &str) -> Vec<Sample> {
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    let mut types = BTreeMap::<String, String>::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && *l != "# EOF") {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_owned(), kind.to_owned());
        } else if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
        } else {
            let sample = parse_sample(line);
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| sample.0.strip_suffix(s).filter(|f| types.contains_key(*f)))
                .unwrap_or(&sample.0);
            let kind = types.get(family).unwrap_or_else(|| panic!("no # TYPE before {line:?}"));
            assert!(sample.1.contains_key("store"), "no store label: {line:?}");
            if kind == "counter" {
                assert!(sample.0.ends_with("_total"), "{line:?}");
            }
            samples.push(sample);
        }
    }
    let histograms: BTreeSet<&String> =
        types.iter().filter(|(_, k)| *k == "histogram").map(|(n, _)| n).collect();
    assert!(histograms.len() >= 3, "write, fsync and group histograms: {histograms:?}");
    for h in histograms {
        let bucket = format!("{h}_bucket");
        let mut by_series = BTreeMap::<String, Vec<(f64, f64)>>::new();
        for (name, labels, value) in samples.iter().filter(|s| s.0 == bucket) {
            let le = labels.get("le").expect("a bucket's le");
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
            by_series.entry(labels["store"].clone()).or_default().push((le, *value));
            let _ = name;
        }
        assert!(!by_series.is_empty(), "{h} has buckets");
        for (store, buckets) in by_series {
            assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "{h}: le in order: {buckets:?}");
            assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{h}: cumulative: {buckets:?}");
            let (le, last) = *buckets.last().unwrap();
            assert!(le.is_infinite(), "{h} ends with +Inf");
            let count = value(&samples, &format!("{h}_count"), &store);
            assert!((last - count).abs() < 0.5, "{h}: +Inf holds every sample ({last}, {count})");
        }
    }
    samples
}

/// The value of the sample `name` of store `store`.
fn value(samples: &[Sample], name: &str, store: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.0 == name && s.1.get("store").map(String::as_str) == Some(store))
        .unwrap_or_else(|| panic!("no {name} for store {store}"))
        .2
}

#[test]
fn a_node_serves_prometheus_metrics_and_its_health_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = common::free_addrs(1);
    let config = common::node_config(
        dir.path(),
        1,
        &addrs,
        ClusterId(7),
        b"a secret of sixteen bytes or more",
    )
    .status_addr("127.0.0.1:0".parse().unwrap());
    let node = Node::open(config).unwrap();
    let status = node.status_addr().expect("a status address was configured");

    let (code, body) = http(status, "GET", "/health");
    assert_eq!((code, body.as_str()), (200, "serving\n"));

    let (code, before) = http(status, "GET", "/metrics");
    assert_eq!(code, 200);
    let before = parse(&before);
    let db = node.db();
    for i in 0..25 {
        db.put(format!("key-{i}"), "value").unwrap();
    }
    let (code, after) = http(status, "GET", "/metrics?x=1");
    assert_eq!(code, 200);
    let after = parse(&after);
    for name in ["regionkv_writes_proposed_total", "regionkv_write_latency_seconds_count"] {
        let grew = value(&after, name, "1") - value(&before, name, "1");
        assert!(grew >= 25.0, "{name} grew by {grew} after 25 puts");
    }
    assert!(value(&after, "regionkv_wal_fsyncs_total", "1") > 0.0);
    assert!((value(&after, "regionkv_regions", "1") - 1.0).abs() < 0.5, "one region");
    assert!(value(&after, "regionkv_client_connections_total", "1") >= 0.0);

    assert_eq!(http(status, "GET", "/nothing-here").0, 404);
    assert_eq!(http(status, "POST", "/metrics").0, 405);

    node.shutdown().unwrap();
    let (code, body) = http(status, "GET", "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("shutting down") && body.ends_with('\n'), "{body:?}");
    assert_eq!(body.lines().count(), 1, "one line: {body:?}");
    drop(node);
    // The server's accept thread ends on its own after the server is dropped: wait
    // (bounded) for the address to refuse connections.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while TcpStream::connect(status).is_ok() {
        assert!(std::time::Instant::now() < deadline, "the status server stops with the node");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
