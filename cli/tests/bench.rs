//! `regionkv bench kv` and `regionkv bench cluster` (with its three node processes) run
//! briefly and print JSON with every key issue 13's "Measure" section names. The
//! figures themselves are not checked: the machine is shared and a test has no timing
//! threshold.

use std::process::Command;

/// Runs `regionkv bench ARGS --json` and parses its output.
fn bench_json(args: &[&str]) -> serde_json::Value {
    bench_json_and_log(args).0
}

/// Runs `regionkv bench ARGS --json`: its parsed stdout and its stderr.
fn bench_json_and_log(args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regionkv"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run regionkv bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?} failed:\n{stdout}\n{stderr}");
    let json =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    (json, stderr.into_owned())
}

/// `report[key]` is an object with a number under each of `counts`.
fn assert_keyed(report: &serde_json::Value, key: &str, counts: &[&str]) {
    for count in counts {
        assert!(report[key][count].is_number(), "{key}[{count:?}] missing in:\n{report:#}");
    }
}

#[test]
fn bench_kv_json_has_every_key_and_plots_its_curves() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("kv.svg");
    let args = ["kv", "--seconds", "0.05", "--threads", "1,2", "--plot", plot.to_str().unwrap()];
    let (report, log) = bench_json_and_log(&args);
    // Not a terminal: each figure says so in one plain line on stderr, and stdout
    // stays one JSON object (parsed above).
    assert!(log.contains("bench: 2 clients for 0.1 s"), "{log}");
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    for curve in ["durable puts", "linearizable gets", "put p99", "client threads"] {
        assert!(svg.contains(curve), "{curve} missing from the plot");
    }
    for key in ["put_ops_per_sec", "put_p50_us", "put_p99_us", "fsyncs_per_put"] {
        assert_keyed(&report, key, &["1", "2"]);
    }
    for key in ["get_ops_per_sec", "fsyncs_per_get"] {
        assert_keyed(&report, key, &["1", "2"]);
    }
    assert!(report["scan_1000_per_sec"].is_number(), "{report:#}");
    // One writer alone: every put waits for its own fsync, none is skipped.
    let fsyncs = report["fsyncs_per_put"]["1"].as_f64().unwrap();
    assert!(fsyncs > 0.0, "a durable put without an fsync: {report:#}");
}

#[test]
fn bench_cluster_json_has_the_process_keys() {
    // Without the WAL baseline, whose spare segments take seconds to prepare here.
    let report =
        bench_json(&["cluster", "--seconds", "0.05", "--clients", "1", "--no-wal-baseline"]);
    for key in [
        "put_ops_per_sec",
        "put_p50_us",
        "put_p99_us",
        "get_ops_per_sec",
        "process_cpu_us_per_put",
        "put_ops_per_sec_tcp",
        "put_p50_us_tcp",
        "put_p99_us_tcp",
        "get_ops_per_sec_tcp",
        "server_cpu_us_per_put",
        "put_tcp_vs_in_process",
        "get_tcp_vs_in_process",
    ] {
        assert_keyed(&report, key, &["1"]);
    }
    for key in ["wal_append_ops_per_sec_64", "put_64_vs_wal_64", "seconds_per_figure"] {
        assert!(report[key].is_number(), "{key} missing in:\n{report:#}");
    }
}

#[test]
fn bench_txn_json_has_every_key() {
    let report = bench_json(&["txn", "--seconds", "0.05", "--clients", "2"]);
    for key in [
        "single_region_ops_per_sec",
        "single_region_p50_us",
        "two_region_ops_per_sec",
        "two_region_p50_us",
        "baseline_single_put_ops_per_sec",
        "baseline_two_batches_ops_per_sec",
        "single_region_vs_single_put",
        "two_region_vs_two_batches",
        "two_region_p50_vs_single_region",
        "snapshot_one_phase_ops_per_sec",
        "snapshot_one_phase_p50_us",
        "snapshot_two_phase_ops_per_sec",
        "snapshot_two_phase_p50_us",
        "snapshot_one_phase_vs_two_phase",
        "snapshot_two_region_ops_per_sec",
        "snapshot_two_region_p50_us",
        "snapshot_two_region_p50_vs_one_region",
    ] {
        assert!(report[key].is_number(), "{key} missing in:\n{report:#}");
    }
    assert_eq!(report["clients"], 2);
}

#[test]
fn a_plot_of_a_bench_without_counts_is_refused_before_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("e.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_regionkv"))
        .args(["bench", "engine", "--quick", "--plot", plot.to_str().unwrap()])
        .output()
        .expect("run regionkv bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--plot is for cluster, kv, regions and wal"), "{stderr}");
    // Refused before it ran: no table was printed.
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!plot.exists());
}
