//! The follower side of a duplication as its shipper reaches it: a follower
//! cluster's [`Db`] routes each `SINK` command to the follower regions it concerns
//! (a range command to every region overlapping the range, ops to the region of each
//! key), and retries a stale route until its deadline.

use std::time::Instant;

use regionkv_engine::Region;
use regionkv_raft::sink::{SinkCmd, SinkEntryCmd, SinkOp, SinkRequest, SinkResult};

use crate::db::{Db, ask};
use crate::defaults::{DIRECTORY_ATTEMPT_TIMEOUT, DRIVER_RETRY_PAUSE};
use crate::error::{Error, Result};

/// Which duplication, incarnation and source region a sink command is for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SinkOf {
    pub dup_id: u64,
    pub incarnation: u32,
    pub source_region: u64,
}

impl Db {
    /// Runs `cmd` on follower region `region` (as routed), once applied; retries a
    /// retryable refusal (a moved leader, a stale epoch: the caller re-routes).
    fn sink_on(&self, region: &Region, of: SinkOf, cmd: SinkCmd) -> Result<SinkResult> {
        let backend = self.router().backend();
        let leader = backend.leader_of(region.id).ok_or_else(|| Error::Unavailable {
            waited: std::time::Duration::ZERO,
            last: format!("no leader of follower region {}", region.id),
        })?;
        let entry = SinkEntryCmd {
            epoch: region.epoch,
            dup_id: of.dup_id,
            incarnation: of.incarnation,
            source_region: of.source_region,
            cmd,
        };
        let region_id = region.id;
        match ask(DIRECTORY_ATTEMPT_TIMEOUT, |reply| {
            backend.sink(leader, SinkRequest { region: region_id, cmd: entry, reply });
        }) {
            Some(result) => result.map_err(Error::from),
            None => Err(Error::Unavailable {
                waited: DIRECTORY_ATTEMPT_TIMEOUT,
                last: format!("store {leader} did not answer a sink command"),
            }),
        }
    }

    /// Retries `f` until it succeeds, fails for good, or the deadline passes.
    fn sink_retry<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e)
                    if (e.is_retryable() || matches!(e, Error::Unavailable { .. }))
                        && start.elapsed() < self.deadline() =>
                {
                    std::thread::sleep(DRIVER_RETRY_PAUSE);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A range command (`Begin`, `End`, `Apply` without ops of a region) to every
    /// follower region overlapping `[start, end)`.
    fn sink_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        of: SinkOf,
        cmd: &SinkCmd,
    ) -> Result<()> {
        self.sink_retry(|| {
            for region in self.covered_regions(start, end) {
                self.sink_on(&region, of, cmd.clone())?;
            }
            Ok(())
        })
    }

    /// Starts loading seed `seed_id` of `[start, end)`: the follower regions wipe the
    /// range.
    pub(crate) fn sink_begin(
        &self,
        of: SinkOf,
        seed_id: u64,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<()> {
        let cmd = SinkCmd::Begin { seed_id, start: start.to_vec(), end: end.map(<[u8]>::to_vec) };
        self.sink_range(start, end, of, &cmd)
    }

    /// Ends seed `seed_id` (the source's image at `seed_index`).
    /// Promotes the follower's regions overlapping `[start, end)`: every entry of the
    /// duplication there is dropped (the keys become writable). Again: no-op.
    pub(crate) fn sink_promote(&self, of: SinkOf, start: &[u8], end: Option<&[u8]>) -> Result<()> {
        self.sink_range(start, end, of, &SinkCmd::Promote)
    }

    pub(crate) fn sink_end(
        &self,
        of: SinkOf,
        seed_id: u64,
        seed_index: u64,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<()> {
        self.sink_range(start, end, of, &SinkCmd::End { seed_id, seed_index })
    }

    /// Groups `items` by the follower region of each key, in key order.
    fn by_region<T>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> &[u8],
    ) -> Result<Vec<(Region, Vec<T>)>> {
        let mut out: Vec<(Region, Vec<T>)> = Vec::new();
        for item in items {
            let k = key(&item);
            if let Some((region, group)) = out.last_mut()
                && region.contains(k)
            {
                group.push(item);
                continue;
            }
            if let Some((_, group)) = out.iter_mut().find(|(r, _)| r.contains(k)) {
                group.push(item);
                continue;
            }
            let record = self.router().locate(k).ok_or_else(|| Error::Unavailable {
                waited: std::time::Duration::ZERO,
                last: "no follower region for a key".into(),
            })?;
            out.push((record.region, vec![item]));
        }
        Ok(out)
    }

    /// Puts of seed `seed_id`.
    pub(crate) fn sink_chunk(
        &self,
        of: SinkOf,
        seed_id: u64,
        puts: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        self.sink_retry(|| {
            for (region, puts) in self.by_region(puts.to_vec(), |(k, _)| k)? {
                self.sink_on(&region, of, SinkCmd::Chunk { seed_id, puts })?;
            }
            Ok(())
        })
    }

    /// Ops of the source region's log over `[start, end)` up to `upto`: every
    /// follower region overlapping the range gets its ops (maybe none) and raises its
    /// marks to `upto`.
    pub(crate) fn sink_apply(
        &self,
        of: SinkOf,
        start: &[u8],
        end: Option<&[u8]>,
        upto: u64,
        ops: &[SinkOp],
    ) -> Result<()> {
        self.sink_retry(|| {
            let mut groups = self.by_region(ops.to_vec(), |op| &op.key)?;
            for region in self.covered_regions(start, end) {
                if !groups.iter().any(|(r, _)| r.id == region.id) {
                    groups.push((region, Vec::new()));
                }
            }
            for (region, ops) in groups {
                let cmd = SinkCmd::Apply {
                    start: start.to_vec(),
                    end: end.map(<[u8]>::to_vec),
                    upto,
                    ops,
                };
                self.sink_on(&region, of, cmd)?;
            }
            Ok(())
        })
    }
}
