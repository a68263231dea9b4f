//! The whole-stack bench: durable puts, linearizable gets, a 90/10 mix and 1,000-key scans
//! through regionkv's public API, on 1 and 3 stores, with fjall and redb on the same workloads.
//!
//! Each criterion group is one workload; its rows are `<system>/<client threads>`, so one
//! report shows regionkv next to its peers, measured in the same run on the same disk.

mod kv;
mod workload;

use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

use kv::System;
use workload::{Run, SCAN_KEYS, Workload};

/// Client-thread counts of the point workloads.
const THREADS: [usize; 3] = [1, 16, 64];
/// Gets also run from 2 threads: whether reads scale past one client (issue 13's table).
const GET_THREADS: [usize; 4] = [1, 2, 16, 64];
/// Scans run from one client thread.
const SCAN_THREADS: [usize; 1] = [1];

/// Short by default, so that the whole suite takes a few minutes on two cores; the
/// command line (`--measurement-time`, `--sample-size`, ...) overrides these.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

/// Runs `workload` against every system at every count of `threads`. A system opens
/// (fresh, in a temporary directory, preloaded if the workload reads) only when a row of
/// it passes the command line's filter, and closes before the next system opens.
fn group(c: &mut Criterion, workload: Workload, threads: &[usize]) {
    let name = format!("{workload:?}").to_lowercase();
    let mut group = c.benchmark_group(&name);
    // Every operation waits for an fsync or a Raft round: few, long iterations.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(match workload {
        Workload::Scan => Throughput::Elements(SCAN_KEYS as u64),
        Workload::Put | Workload::Get | Workload::Mixed => Throughput::Elements(1),
    });
    for system in System::ALL {
        let mut run: Option<Run> = None;
        for &threads in threads {
            group.bench_function(BenchmarkId::new(system.name(), threads), |b| {
                let run = run.get_or_insert_with(|| Run::start(system, workload));
                b.iter_custom(|ops| run.measure(threads, ops));
            });
        }
    }
    group.finish();
}

fn put(c: &mut Criterion) {
    group(c, Workload::Put, &THREADS);
}

fn get(c: &mut Criterion) {
    group(c, Workload::Get, &GET_THREADS);
}

fn mixed(c: &mut Criterion) {
    group(c, Workload::Mixed, &THREADS);
}

fn scan(c: &mut Criterion) {
    group(c, Workload::Scan, &SCAN_THREADS);
}

criterion_group! {
    name = stack;
    config = config();
    targets = put, get, mixed, scan
}
criterion_main!(stack);
