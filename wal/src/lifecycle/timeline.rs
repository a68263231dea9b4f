//! A timeline: one LSN-ordered ingest stream with a lifecycle (Neon's pattern).
//!
//! Each region replica ingests its committed log into the engine through a timeline.
//! The lesson from the Neon pageserver: during shutdown, the tasks that feed a timeline
//! fail in many ways (a closed channel, a cancelled flush, a gate that is closed), and
//! reporting those as errors, or worse as corruption, pages people for nothing and hides
//! the real errors. So every error a timeline sees passes through [`Timeline::classify`],
//! which turns it into [`IngestError::Cancelled`] once [`Timeline::shutdown_began`], a
//! predicate that is monotonic: it becomes true when shutdown starts and stays true.
//! Cancelled errors are logged at debug level, never at error level.
//!
//! Shutdown is one ordered sequence, [`Timeline::shutdown`]:
//! 1. cancel the timeline's token (and with it every ingest task's child token);
//! 2. mark the timeline `Stopping`;
//! 3. close the gate: wait, bounded in time, until every task inside has left;
//! 4. flush and fsync what was ingested;
//! 5. mark it `Stopped`.
//!
//! The store then writes its clean-shutdown mark (for the WAL: [`crate::Wal::close`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::cancel::CancellationToken;
use super::gate::{Gate, GateTimeout};
use crate::error::Error;
use crate::log::Wal;
use crate::lsn::Lsn;

/// Where a timeline is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimelineState {
    /// Ingesting.
    Active,
    /// Shutdown began; waiting for tasks to leave and for the flush.
    Stopping,
    /// Shut down cleanly: everything ingested is durable.
    Stopped,
    /// An ingest failed in a way that leaves the timeline's state unknown; it refuses
    /// ingest until the store reopens it.
    Broken,
}

/// Why an ingest did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The timeline is shutting down; not a failure.
    #[error("ingest cancelled: the timeline is shutting down")]
    Cancelled,
    /// A record arrived at or below the last ingested Lsn.
    #[error("out-of-order ingest: lsn {got} is not after the last ingested lsn {last}")]
    OutOfOrder {
        /// The last Lsn ingested.
        last: Lsn,
        /// The Lsn offered.
        got: Lsn,
    },
    /// The timeline broke earlier; reopen the store to recover it.
    #[error("the timeline is broken ({reason}); reopen the store to recover it")]
    Broken {
        /// The error that broke it.
        reason: Arc<str>,
    },
    /// The log refused the record.
    #[error("the log refused the record: {0}")]
    Wal(#[from] Error),
    /// Applying the record failed.
    #[error("applying the record failed: {0}")]
    Apply(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl IngestError {
    /// True for [`IngestError::Cancelled`]. Exhaustive: a new variant must decide.
    pub fn is_cancelled(&self) -> bool {
        match self {
            IngestError::Cancelled => true,
            IngestError::OutOfOrder { .. }
            | IngestError::Broken { .. }
            | IngestError::Wal(_)
            | IngestError::Apply(_) => false,
        }
    }

    /// True if the error leaves the timeline's state unknown, so it must break.
    fn breaks_timeline(&self) -> bool {
        match self {
            IngestError::Wal(_) | IngestError::Apply(_) => true,
            IngestError::Cancelled
            | IngestError::OutOfOrder { .. }
            | IngestError::Broken { .. } => false,
        }
    }
}

/// A shutdown that could not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// Tasks stayed inside the gate past the timeout; the timeline stays `Stopping`.
    #[error("timeline {timeline}: {source}")]
    GateTimeout {
        /// The timeline's name.
        timeline: String,
        /// Who is still inside.
        #[source]
        source: GateTimeout,
    },
    /// The final flush failed: what was ingested may not be durable. The timeline is
    /// `Broken`, and the store must not write its clean-shutdown mark.
    #[error("timeline {timeline}: final flush failed: {source}")]
    Flush {
        /// The timeline's name.
        timeline: String,
        /// The flush's error.
        #[source]
        source: Error,
    },
}

/// One LSN-ordered ingest stream with a lifecycle. Clones share the timeline.
#[derive(Clone)]
pub struct Timeline {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    cancel: CancellationToken,
    gate: Gate,
    state: Mutex<TimelineState>,
    broken: Mutex<Option<Arc<str>>>,
    /// The last Lsn ingested; held across an ingest so one record is ingested at a time.
    last_lsn: Mutex<Option<Lsn>>,
}

impl fmt::Debug for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeline")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

impl Timeline {
    /// An active timeline whose token is a child of `parent` (the store's token).
    pub fn new(name: impl Into<String>, parent: &CancellationToken) -> Timeline {
        Timeline {
            inner: Arc::new(Inner {
                name: name.into(),
                cancel: parent.child(),
                gate: Gate::new(),
                state: Mutex::new(TimelineState::Active),
                broken: Mutex::new(None),
                last_lsn: Mutex::new(None),
            }),
        }
    }

    /// The timeline's name, used in logs.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current state.
    pub fn state(&self) -> TimelineState {
        *self.inner.state.lock()
    }

    /// The last Lsn ingested.
    pub fn last_lsn(&self) -> Option<Lsn> {
        *self.inner.last_lsn.lock()
    }

    /// The timeline's token; ingest tasks take a [`CancellationToken::child`] of it.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// True from the moment shutdown began (or an ancestor token was cancelled), and
    /// forever after: the one predicate that decides whether an error is `Cancelled`.
    pub fn shutdown_began(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Classifies an error seen by this timeline: once shutdown began, every error is
    /// [`IngestError::Cancelled`], whatever it was.
    pub fn classify(&self, error: IngestError) -> IngestError {
        if self.shutdown_began() { IngestError::Cancelled } else { error }
    }

    /// Ingests the record at `lsn` by running `apply`: one record at a time, in Lsn
    /// order, inside the gate. Errors are classified and logged here.
    pub fn ingest<E>(
        &self,
        lsn: Lsn,
        apply: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), IngestError>
    where
        E: Into<IngestError>,
    {
        self.ingest_with(|| Ok(lsn), |_| apply().map_err(Into::into)).map(|_| ())
    }

    /// Appends `payload` to `wal` (waiting for its fsync) and ingests it at the Lsn the
    /// log gave it by running `apply`. Returns that Lsn.
    pub fn append<E>(
        &self,
        wal: &Wal,
        payload: &[u8],
        apply: impl FnOnce(Lsn) -> Result<(), E>,
    ) -> Result<Lsn, IngestError>
    where
        E: Into<IngestError>,
    {
        self.ingest_with(
            || wal.append(payload).map_err(IngestError::Wal),
            |lsn| apply(lsn).map_err(Into::into),
        )
    }

    fn ingest_with(
        &self,
        position: impl FnOnce() -> Result<Lsn, IngestError>,
        apply: impl FnOnce(Lsn) -> Result<(), IngestError>,
    ) -> Result<Lsn, IngestError> {
        let result = self.try_ingest(position, apply);
        result.map_err(|e| self.on_error(e))
    }

    fn try_ingest(
        &self,
        position: impl FnOnce() -> Result<Lsn, IngestError>,
        apply: impl FnOnce(Lsn) -> Result<(), IngestError>,
    ) -> Result<Lsn, IngestError> {
        if self.shutdown_began() {
            return Err(IngestError::Cancelled);
        }
        let _inside = self.inner.gate.enter("ingest").map_err(|_| IngestError::Cancelled)?;
        if let Some(reason) = self.inner.broken.lock().clone() {
            return Err(IngestError::Broken { reason });
        }
        let mut last = self.inner.last_lsn.lock();
        let lsn = position()?;
        if let Some(last) = *last
            && lsn <= last
        {
            return Err(IngestError::OutOfOrder { last, got: lsn });
        }
        apply(lsn)?;
        *last = Some(lsn);
        Ok(lsn)
    }

    /// Classifies, logs, and breaks the timeline if the error requires it.
    fn on_error(&self, error: IngestError) -> IngestError {
        let error = self.classify(error);
        if error.is_cancelled() {
            tracing::debug!(timeline = %self.inner.name, "ingest cancelled by shutdown");
        } else if error.breaks_timeline() {
            let reason: Arc<str> = Arc::from(error.to_string());
            self.inner.broken.lock().get_or_insert(reason);
            *self.inner.state.lock() = TimelineState::Broken;
            tracing::error!(timeline = %self.inner.name, error = %error, "ingest failed; timeline is broken");
        } else {
            tracing::warn!(timeline = %self.inner.name, error = %error, "ingest refused");
        }
        error
    }

    /// Shuts the timeline down in order: cancel, `Stopping`, gate (bounded by
    /// `timeout`), `flush`, `Stopped`. A broken timeline is not flushed and stays broken.
    pub fn shutdown(
        &self,
        timeout: Duration,
        flush: impl FnOnce() -> Result<(), Error>,
    ) -> Result<(), ShutdownError> {
        // 1. Cancel: every ingest task's token is a child of this one.
        self.inner.cancel.cancel();
        // 2. Stopping: from here every error the timeline sees is Cancelled.
        {
            let mut state = self.inner.state.lock();
            if *state == TimelineState::Active {
                *state = TimelineState::Stopping;
            }
        }
        // 3. Wait until every task holding the timeline has left.
        let name = || self.inner.name.clone();
        self.inner
            .gate
            .close(timeout)
            .map_err(|source| ShutdownError::GateTimeout { timeline: name(), source })?;
        if self.state() == TimelineState::Broken {
            tracing::info!(timeline = %self.inner.name, "shut down a broken timeline without flushing");
            return Ok(());
        }
        // 4. Flush and fsync what was ingested.
        if let Err(source) = flush() {
            *self.inner.state.lock() = TimelineState::Broken;
            return Err(ShutdownError::Flush { timeline: name(), source });
        }
        // 5. Done.
        *self.inner.state.lock() = TimelineState::Stopped;
        tracing::debug!(timeline = %self.inner.name, last_lsn = ?self.last_lsn(), "timeline stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("downstream channel closed")]
    struct Disconnected;

    impl From<Disconnected> for IngestError {
        fn from(e: Disconnected) -> Self {
            IngestError::Apply(Box::new(e))
        }
    }

    #[test]
    fn ingest_is_ordered() {
        let tl = Timeline::new("t", &CancellationToken::new());
        tl.ingest(Lsn(5), || Ok::<_, IngestError>(())).unwrap();
        let err = tl.ingest(Lsn(5), || Ok::<_, IngestError>(())).unwrap_err();
        assert!(matches!(err, IngestError::OutOfOrder { last: Lsn(5), got: Lsn(5) }));
        assert_eq!(
            tl.state(),
            TimelineState::Active,
            "a refused record does not break the timeline"
        );
        tl.ingest(Lsn(9), || Ok::<_, IngestError>(())).unwrap();
        assert_eq!(tl.last_lsn(), Some(Lsn(9)));
    }

    #[test]
    fn errors_before_shutdown_break_and_after_shutdown_are_cancelled() {
        let store = CancellationToken::new();
        let tl = Timeline::new("t", &store);
        let err = tl.ingest(Lsn(1), || Err(Disconnected)).unwrap_err();
        assert!(matches!(err, IngestError::Apply(_)));
        assert_eq!(tl.state(), TimelineState::Broken);

        let tl = Timeline::new("u", &store);
        store.cancel();
        // The same failure, once shutdown began (here: from the store's token), is Cancelled.
        let err = tl.ingest(Lsn(1), || Err(Disconnected)).unwrap_err();
        assert!(err.is_cancelled());
        assert_eq!(tl.state(), TimelineState::Active, "cancellation does not break");
    }

    #[test]
    fn an_error_raised_while_shutdown_runs_is_cancelled() {
        let tl = Timeline::new("t", &CancellationToken::new());
        let inside = std::sync::Barrier::new(2);
        let release = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            let ingest = s.spawn(|| {
                tl.ingest(Lsn(1), || {
                    inside.wait();
                    release.wait(); // shutdown has begun by now
                    Err(Disconnected)
                })
            });
            inside.wait();
            let shutdown = s.spawn(|| tl.shutdown(Duration::from_secs(60), || Ok(())));
            while !tl.shutdown_began() {
                std::thread::yield_now();
            }
            release.wait();
            assert!(ingest.join().unwrap().unwrap_err().is_cancelled());
            shutdown.join().unwrap().unwrap();
        });
        assert_eq!(tl.state(), TimelineState::Stopped);
        assert!(tl.ingest(Lsn(2), || Ok::<_, IngestError>(())).unwrap_err().is_cancelled());
    }

    #[test]
    fn a_failed_flush_breaks_the_timeline() {
        let tl = Timeline::new("t", &CancellationToken::new());
        let err = tl.shutdown(Duration::from_secs(1), || Err(Error::Closed)).unwrap_err();
        assert!(matches!(err, ShutdownError::Flush { .. }));
        assert_eq!(tl.state(), TimelineState::Broken);
    }

    #[test]
    fn a_stuck_task_makes_shutdown_time_out_and_names_it() {
        let tl = Timeline::new("t", &CancellationToken::new());
        let _stuck = tl.inner.gate.enter("stuck").unwrap();
        let err = tl.shutdown(Duration::from_millis(10), || Ok(())).unwrap_err();
        let ShutdownError::GateTimeout { source, .. } = err else { panic!("expected a timeout") };
        assert_eq!(source.holders, vec!["stuck"]);
        assert_eq!(tl.state(), TimelineState::Stopping);
    }
}
