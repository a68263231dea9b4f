//! What a core hands its driver: an [`Output`] from every flush, with the [`WriteTask`]
//! to persist and the [`CoreTask`]s for the cores that own other regions.

use regionkv_engine::RegionId;

use crate::directory::RegionRecord;
use crate::log::LogWrite;
use crate::transport::Envelope;

/// Work for the core that owns a region, handed over by another core (or queued by a
/// core for itself). Splits and merges touch two regions; each region's state changes
/// only in the core that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreTask {
    /// Create the replica of split child `region`: the engine hosts it and its log
    /// exists. It campaigns at once if the parent's leader was on this store.
    Adopt {
        /// The child.
        region: RegionId,
        /// Campaign now.
        campaign: bool,
    },
    /// Merge target `target` here waits for merge source `source` here to apply its
    /// log up to `index` (whose term is `term`).
    CatchUp {
        /// The source.
        source: RegionId,
        /// The target waiting.
        target: RegionId,
        /// Index of the source's prepare command.
        index: u64,
        /// Its term.
        term: u64,
    },
    /// Merge source `source` here has applied its prepare command.
    SourceReady {
        /// The target waiting.
        target: RegionId,
        /// The source.
        source: RegionId,
    },
    /// `source` was merged into a target here: its replica goes (the engine no
    /// longer hosts it).
    Merged {
        /// The source.
        source: RegionId,
    },
}

impl CoreTask {
    /// The region whose core must handle this.
    pub fn region(&self) -> RegionId {
        match self {
            CoreTask::Adopt { region, .. } => *region,
            CoreTask::CatchUp { source, .. } | CoreTask::Merged { source } => *source,
            CoreTask::SourceReady { target, .. } => *target,
        }
    }
}

/// A log write to make durable, and what waits for it.
#[derive(Debug)]
pub struct WriteTask {
    /// The staged changes.
    pub write: LogWrite,
    /// Messages that may leave only once the write is durable.
    pub messages: Vec<Envelope>,
    /// Readies to report through [`StoreCore::on_persisted`](crate::StoreCore::on_persisted) once it is.
    pub readies: Vec<(RegionId, u64)>,
}

/// What a [`StoreCore::flush`](crate::StoreCore::flush) asks the driver to do.
#[derive(Debug, Default)]
pub struct Output {
    /// Send these now.
    pub messages: Vec<Envelope>,
    /// Persist this, then send its messages and report its readies.
    pub write: Option<WriteTask>,
    /// Hand these to the cores that own their regions ([`CoreTask::region`]).
    pub tasks: Vec<CoreTask>,
    /// Regions this store leads that changed (split, merge, membership, leadership):
    /// for the cluster directory.
    pub reports: Vec<RegionRecord>,
}
