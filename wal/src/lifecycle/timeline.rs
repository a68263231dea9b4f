//! A timeline: one ordered ingest stream with a lifecycle (Neon's pattern).
//!
//! A timeline knows nothing of what flows through it. Its records come at positions
//! the caller chooses, opaque to the timeline and strictly increasing (a log's
//! [`Lsn`], an index of the caller's own log, a sequence number): the type parameter
//! of [`Timeline`]. It runs the caller's apply for each, one at a time, in position
//! order, inside its gate. The lesson from the Neon pageserver: during shutdown, the tasks that feed a timeline
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

use std::fmt::{self, Debug, Display};
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

/// What a [`Timeline`] orders its records by: an opaque, strictly increasing position
/// chosen by the caller. Any totally ordered value that can be copied and printed is
/// one.
pub trait Position: Copy + Ord + Debug + Display + Send + Sync + 'static {}

impl<P: Copy + Ord + Debug + Display + Send + Sync + 'static> Position for P {}

/// Why an ingest did not happen; `P` is the timeline's [`Position`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError<P> {
    /// The timeline is shutting down; not a failure.
    #[error("ingest cancelled: the timeline is shutting down")]
    Cancelled,
    /// A record arrived at or below the last ingested position.
    #[error("out-of-order ingest: position {got} is not after the last ingested position {last}")]
    OutOfOrder {
        /// The last position ingested.
        last: P,
        /// The position offered.
        got: P,
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

impl<P> IngestError<P> {
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

/// One ordered ingest stream with a lifecycle, its records at positions of type `P`
/// (see [`Position`]). Clones share the timeline.
pub struct Timeline<P> {
    inner: Arc<Inner<P>>,
}

impl<P> Clone for Timeline<P> {
    fn clone(&self) -> Self {
        Timeline { inner: self.inner.clone() }
    }
}

struct Inner<P> {
    name: String,
    cancel: CancellationToken,
    gate: Gate,
    state: Mutex<TimelineState>,
    broken: Mutex<Option<Arc<str>>>,
    /// The last position ingested; held across an ingest so one record is ingested at a
    /// time.
    last: Mutex<Option<P>>,
}

impl<P: Position> fmt::Debug for Timeline<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeline")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

impl<P: Position> Timeline<P> {
    /// An active timeline whose token is a child of `parent` (the store's token).
    pub fn new(name: impl Into<String>, parent: &CancellationToken) -> Timeline<P> {
        Timeline {
            inner: Arc::new(Inner {
                name: name.into(),
                cancel: parent.child(),
                gate: Gate::new(),
                state: Mutex::new(TimelineState::Active),
                broken: Mutex::new(None),
                last: Mutex::new(None),
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

    /// The last position ingested.
    pub fn last_position(&self) -> Option<P> {
        *self.inner.last.lock()
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
    pub fn classify(&self, error: IngestError<P>) -> IngestError<P> {
        if self.shutdown_began() { IngestError::Cancelled } else { error }
    }

    /// Ingests the record at `position` by running `apply`: one record at a time, in
    /// position order, inside the gate. Errors are classified and logged here.
    pub fn ingest<E>(
        &self,
        position: P,
        apply: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), IngestError<P>>
    where
        E: Into<IngestError<P>>,
    {
        self.ingest_with(|| Ok(position), |_| apply().map_err(Into::into)).map(|_| ())
    }

    fn ingest_with(
        &self,
        position: impl FnOnce() -> Result<P, IngestError<P>>,
        apply: impl FnOnce(P) -> Result<(), IngestError<P>>,
    ) -> Result<P, IngestError<P>> {
        let result = self.try_ingest(position, apply);
        result.map_err(|e| self.on_error(e))
    }

    fn try_ingest(
        &self,
        position: impl FnOnce() -> Result<P, IngestError<P>>,
        apply: impl FnOnce(P) -> Result<(), IngestError<P>>,
    ) -> Result<P, IngestError<P>> {
        if self.shutdown_began() {
            return Err(IngestError::Cancelled);
        }
        let _inside = self.inner.gate.enter("ingest").map_err(|_| IngestError::Cancelled)?;
        if let Some(reason) = self.inner.broken.lock().clone() {
            return Err(IngestError::Broken { reason });
        }
        let mut last = self.inner.last.lock();
        let position = position()?;
        if let Some(last) = *last
            && position <= last
        {
            return Err(IngestError::OutOfOrder { last, got: position });
        }
        apply(position)?;
        *last = Some(position);
        Ok(position)
    }

    /// Classifies, logs, and breaks the timeline if the error requires it.
    fn on_error(&self, error: IngestError<P>) -> IngestError<P> {
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
        tracing::debug!(timeline = %self.inner.name, last = ?self.last_position(), "timeline stopped");
        Ok(())
    }
}

impl Timeline<Lsn> {
    /// Appends `payload` to `wal` (waiting for its fsync) and ingests it at the Lsn the
    /// log gave it by running `apply`. Returns that Lsn.
    pub fn append<E>(
        &self,
        wal: &Wal,
        payload: &[u8],
        apply: impl FnOnce(Lsn) -> Result<(), E>,
    ) -> Result<Lsn, IngestError<Lsn>>
    where
        E: Into<IngestError<Lsn>>,
    {
        self.ingest_with(
            || wal.append(payload).map_err(IngestError::Wal),
            |lsn| apply(lsn).map_err(Into::into),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("downstream channel closed")]
    struct Disconnected;

    impl From<Disconnected> for IngestError<Lsn> {
        fn from(e: Disconnected) -> Self {
            IngestError::Apply(Box::new(e))
        }
    }

    #[test]
    fn ingest_is_ordered() {
        let tl = Timeline::new("t", &CancellationToken::new());
        tl.ingest(Lsn(5), || Ok::<_, IngestError<Lsn>>(())).unwrap();
        let err = tl.ingest(Lsn(5), || Ok::<_, IngestError<Lsn>>(())).unwrap_err();
        assert!(matches!(err, IngestError::OutOfOrder { last: Lsn(5), got: Lsn(5) }));
        assert_eq!(
            tl.state(),
            TimelineState::Active,
            "a refused record does not break the timeline"
        );
        tl.ingest(Lsn(9), || Ok::<_, IngestError<Lsn>>(())).unwrap();
        assert_eq!(tl.last_position(), Some(Lsn(9)));
    }

    #[test]
    fn positions_are_the_callers() {
        // A log index of the caller's, not a WAL position: any ordered type will do.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        struct Index(u64);
        impl fmt::Display for Index {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
        let tl = Timeline::new("t", &CancellationToken::new());
        tl.ingest(Index(3), || Ok::<_, IngestError<Index>>(())).unwrap();
        let err = tl.ingest(Index(2), || Ok::<_, IngestError<Index>>(())).unwrap_err();
        assert!(matches!(err, IngestError::OutOfOrder { last: Index(3), got: Index(2) }));
        assert!(err.to_string().contains("position 2 is not after the last ingested position 3"));
        let plain = Timeline::<u64>::new("u", &CancellationToken::new());
        plain.ingest(7, || Ok::<_, IngestError<u64>>(())).unwrap();
        assert_eq!((tl.last_position(), plain.last_position()), (Some(Index(3)), Some(7)));
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
        assert!(tl.ingest(Lsn(2), || Ok::<_, IngestError<Lsn>>(())).unwrap_err().is_cancelled());
    }

    #[test]
    fn a_failed_flush_breaks_the_timeline() {
        let tl = Timeline::<Lsn>::new("t", &CancellationToken::new());
        let err = tl.shutdown(Duration::from_secs(1), || Err(Error::Closed)).unwrap_err();
        assert!(matches!(err, ShutdownError::Flush { .. }));
        assert_eq!(tl.state(), TimelineState::Broken);
    }

    #[test]
    fn a_stuck_task_makes_shutdown_time_out_and_names_it() {
        let tl = Timeline::<Lsn>::new("t", &CancellationToken::new());
        let _stuck = tl.inner.gate.enter("stuck").unwrap();
        let err = tl.shutdown(Duration::from_millis(10), || Ok(())).unwrap_err();
        let ShutdownError::GateTimeout { source, .. } = err else { panic!("expected a timeout") };
        assert_eq!(source.holders, vec!["stuck"]);
        assert_eq!(tl.state(), TimelineState::Stopping);
    }
}
