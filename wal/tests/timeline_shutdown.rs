//! Timeline shutdown under load (invariant 2 in ARCHITECTURE.md, Neon's lesson): several
//! timelines ingest into one shared log while the store shuts down, many times over with different
//! timing. Every error an ingest task sees is `Cancelled`, no event is logged at error
//! level, shutdown completes within its bound, and the log reopens under
//! `AbsoluteConsistency` with every acknowledged record in it.

use std::collections::BTreeMap;
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use regionkv_wal::fs::FileSystem;
use regionkv_wal::{
    CancellationToken, CrashMode, IngestError, Lsn, RealFs, RecoveryMode, SimFs, SparePreparation,
    Timeline, TimelineState, Wal, WalOptions,
};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Records the fields of error-level events.
struct ErrorCapture;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl<S: Subscriber> Layer<S> for ErrorCapture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() == Level::ERROR {
            let mut text = String::new();
            event.record(&mut Fields(&mut text));
            error_events().lock().unwrap().push(text);
        }
    }
}

/// Messages of every error-level event in this process.
fn error_events() -> &'static Mutex<Vec<String>> {
    static EVENTS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    EVENTS.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(ErrorCapture);
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        Mutex::default()
    })
}

/// What the applier receives: the timeline's index, the record's Lsn and payload.
type Applied = (usize, Lsn, Vec<u8>);

#[derive(Debug, thiserror::Error)]
#[error("the applier has stopped")]
struct ApplierGone;

/// What a timeline fed by the log refuses with.
type LsnIngestError = IngestError<Lsn>;

/// One ingest task: appends through its timeline until it is told to stop, and keeps
/// what was acknowledged and every error it saw.
fn ingest_task(
    index: usize,
    timeline: &Timeline<Lsn>,
    wal: &Wal,
    to_applier: &SyncSender<Applied>,
) -> (Vec<(Lsn, Vec<u8>)>, Vec<LsnIngestError>) {
    let task_token = timeline.cancellation().child();
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for i in 0u32.. {
        if task_token.is_cancelled() {
            break;
        }
        let payload = [&(index as u32).to_le_bytes()[..], &i.to_le_bytes(), &[7u8; 40]].concat();
        let sent = timeline.append(wal, &payload, |lsn| {
            to_applier
                .send((index, lsn, payload.clone()))
                .map_err(|_| IngestError::Apply(Box::new(ApplierGone)))
        });
        match sent {
            Ok(lsn) => acked.push((lsn, payload)),
            Err(e) => {
                errors.push(e);
                if i > 1_000_000 {
                    break; // a bound on the loop, never reached in practice
                }
            }
        }
    }
    (acked, errors)
}

/// One round: start `timelines` ingest tasks on one log, let them run for `run_for`,
/// shut the store down, and check everything. Returns the records acked and the errors
/// the tasks saw.
fn round(
    fs: Arc<dyn FileSystem>,
    dir: &std::path::Path,
    timelines: usize,
    run_for: Duration,
) -> (usize, usize) {
    let options = WalOptions::default()
        .segment_bytes(256 << 10)
        .spare_preparation(SparePreparation::OnDemand);
    let wal = Wal::open(fs.clone(), dir, options.clone()).unwrap();
    let store = CancellationToken::new();
    let lines: Vec<Timeline<Lsn>> =
        (0..timelines).map(|i| Timeline::new(format!("region-{i}"), &store)).collect();
    let (to_applier, from_ingest) = sync_channel::<Applied>(16);
    let errors_before = error_events().lock().unwrap().len();

    let (acked, applied, errors) = std::thread::scope(|s| {
        // The applier leaves as soon as the store is cancelled: ingest tasks that still
        // send then fail, which is exactly the kind of error shutdown must classify.
        let applier = {
            let store = store.clone();
            s.spawn(move || {
                let mut applied = Vec::new();
                while !store.is_cancelled() {
                    match from_ingest.recv_timeout(Duration::from_micros(200)) {
                        Ok(item) => applied.push(item),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                applied
            })
        };
        let tasks: Vec<_> = lines
            .iter()
            .enumerate()
            .map(|(i, tl)| {
                let (wal, tx) = (&wal, to_applier.clone());
                s.spawn(move || ingest_task(i, tl, wal, &tx))
            })
            .collect();
        drop(to_applier);

        std::thread::sleep(run_for);
        // The store's shutdown, in order: cancel from the top, then each timeline
        // (Stopping, gate, flush), then the clean-shutdown mark.
        let started = Instant::now();
        store.cancel();
        for tl in &lines {
            tl.shutdown(Duration::from_secs(30), || wal.sync())
                .expect("timeline shutdown completes within its bound");
            assert_eq!(tl.state(), TimelineState::Stopped);
        }
        wal.close().unwrap();
        let shutdown_took = started.elapsed();
        let mut acked = Vec::new();
        let mut errors = Vec::new();
        for t in tasks {
            let (a, e) = t.join().unwrap();
            acked.extend(a);
            errors.extend(e);
        }
        assert!(shutdown_took < Duration::from_secs(30));
        (acked, applier.join().unwrap(), errors)
    });

    for e in &errors {
        assert!(
            e.is_cancelled(),
            "an ingest error during shutdown was not classified Cancelled: {e}"
        );
    }
    let logged: Vec<String> = error_events().lock().unwrap()[errors_before..].to_vec();
    assert!(logged.is_empty(), "error-level events during shutdown: {logged:?}");
    // Whatever the applier got was acknowledged first.
    let acked_map: BTreeMap<Lsn, Vec<u8>> = acked.iter().cloned().collect();
    for (_, lsn, payload) in &applied {
        assert_eq!(acked_map.get(lsn), Some(payload));
    }

    // The clean close lets the log reopen under AbsoluteConsistency, and every
    // acknowledged record is there.
    let wal = Wal::open(fs, dir, options.recovery(RecoveryMode::AbsoluteConsistency)).unwrap();
    assert!(wal.recovery_report().clean);
    let on_disk: BTreeMap<Lsn, Vec<u8>> = wal
        .iter_from(wal.first_lsn())
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap();
    for (lsn, payload) in &acked_map {
        assert_eq!(
            on_disk.get(lsn),
            Some(payload),
            "acknowledged record at {lsn:?} missing after shutdown"
        );
    }
    (acked.len(), errors.len())
}

#[test]
fn shutdown_while_ingesting_is_quiet_bounded_and_loses_nothing() {
    let _ = error_events();
    let (mut acked, mut errors) = (0, 0);
    for i in 0..120u64 {
        let timelines = 2 + (i % 4) as usize;
        // From "before the tasks really started" to "well into a steady state".
        let run_for = Duration::from_micros((i * 37) % 2_000);
        let sim = SimFs::new();
        let (a, e) = round(Arc::new(sim.clone()), std::path::Path::new("/wal"), timelines, run_for);
        acked += a;
        errors += e;
        // The clean close was durable: a power loss right after changes nothing.
        let after = Wal::open(
            Arc::new(sim.crash(CrashMode::Lost)),
            "/wal",
            WalOptions::default()
                .segment_bytes(256 << 10)
                .recovery(RecoveryMode::AbsoluteConsistency),
        );
        assert!(after.is_ok(), "the seal survives a power loss: {:?}", after.err());
    }
    assert!(acked > 0, "the tasks got work done before shutdown");
    assert!(errors > 0, "shutdown raced with ingest: tasks saw errors to classify");
}

#[test]
fn shutdown_on_the_real_disk() {
    let _ = error_events();
    for i in 0..10u64 {
        let dir = tempfile::tempdir().unwrap();
        round(Arc::new(RealFs), dir.path(), 3, Duration::from_millis(i * 2));
    }
}
