//! Duplication's follower side in the store core (`crate::sink`): proposing and
//! applying `SINK` commands, and the standby check of client writes before proposing.

use regionkv_engine::RegionId;
use regionkv_engine::sink::{SinkSlot, SinkTable};

use super::StoreCore;
use super::apply::Applier;
use crate::command::{self, Op};
use crate::directory::DIRECTORY;
use crate::error::{Error, Result};
use crate::replica::{Proposed, Replica, Waiting};
use crate::sink::{SinkCmd, SinkEntryCmd, SinkRequest, SinkResult};

impl StoreCore {
    /// Takes a sink command: refused below cluster version 7
    /// ([`crate::version::DUP_V2`]: nothing is proposed), checked against the leader's
    /// view (the epoch's version, not a prepared merge source), and proposed alone in
    /// its entry. Every check of the command itself is made when it applies.
    pub fn on_sink(&mut self, req: SinkRequest) {
        let SinkRequest { region, cmd, reply } = req;
        if region == DIRECTORY {
            self.wake(region);
            reply(Err(Error::InvalidRequest(
                "the cluster directory takes directory commands only".into(),
            )));
            return;
        }
        let checked = self
            .ctx
            .cluster_version
            .check(crate::version::DUP_V2)
            .and_then(|()| self.leader_at(region, cmd.epoch));
        let replica = match checked {
            Ok(replica) => replica,
            Err(e) => {
                reply(Err(e));
                return;
            }
        };
        let data = command::encode_sink(&cmd);
        if replica.propose(Proposed::Entry(data), Waiting::Sink(reply)).is_some() {
            self.dirty.insert(region);
        }
    }

    /// Applies a sink command at `index`: the round before it is committed, its writes
    /// go in a round of their own, committed, and then the region's sink state is set,
    /// so every image holds the data and the marks of the same index (a replay after a
    /// restart starts from such an image). The outer result fails the apply; the inner
    /// one is the command's outcome, decided from the command, the region (range, epoch
    /// version, merge state), its data and its sink state: alike on every replica.
    pub(super) fn apply_sink(
        &mut self,
        region: RegionId,
        index: u64,
        sink: &SinkEntryCmd,
        applier: &mut Applier<'_>,
    ) -> Result<Result<SinkResult>> {
        if region == DIRECTORY {
            return Ok(Err(Error::InvalidRequest("a sink command to the directory".into())));
        }
        applier.cut()?;
        let replica = self.replicas.get(&region).expect("present");
        let refused = if let Err(e) = replica.check_version(sink.epoch) {
            Some(e)
        } else {
            replica
                .merge
                .state
                .filter(|m| index > m.prepare_index)
                .map(|m| Error::Merging { region, target: m.target })
        };
        if let Some(e) = refused.or_else(|| check_sink_limits(applier, &sink.cmd).err()) {
            tracing::info!(region = region.0, index, error = %e, "sink command refused");
            return Ok(Err(e));
        }
        let engine = self.ctx.engine_of(region);
        let mut table = engine.sink_table(region).ok_or(Error::RegionNotFound { region })?;
        let view = engine.read_view();
        let keys_in = |start: &[u8], end: Option<&[u8]>| {
            let mut keys = Vec::new();
            view.for_each(start, end, |k, _| {
                keys.push(k.to_vec());
                true
            });
            keys
        };
        let writes = match crate::sink::apply(&mut table, &replica.region, sink, &keys_in) {
            Ok(writes) => writes,
            Err(refused) => {
                tracing::info!(region = region.0, index, dup = sink.dup_id, error = %refused, "sink command refused");
                return Ok(Err(refused));
            }
        };
        drop(view);
        let applied_ops = writes.ops.len();
        if !writes.wipe.is_empty() || !writes.ops.is_empty() {
            applier.round.prepare_for_region(region, replica.region.epoch)?;
            for key in &writes.wipe {
                applier.round.delete(key)?;
            }
            for (key, value) in &writes.ops {
                match value {
                    Some(v) => applier.round.put(key, v)?,
                    None => applier.round.delete(key)?,
                }
            }
            applier.cut()?;
        }
        let entry = match table.get(sink.dup_id, sink.source_region) {
            Some(SinkSlot::Known(e)) if !matches!(sink.cmd, SinkCmd::Promote) => Some(e.clone()),
            _ => None,
        };
        engine.set_sink_table(region, table)?;
        tracing::debug!(
            region = region.0,
            index,
            dup = sink.dup_id,
            applied_ops,
            skipped = writes.skipped,
            "sink command applied"
        );
        Ok(Ok(SinkResult { index, applied_ops, skipped_ops: writes.skipped, entry }))
    }

    /// Refuses, before proposing, a client write to a key a sink holds on this
    /// leader's view (the authoritative check is at apply). Only a view that holds
    /// every committed entry counts: a leader that has not yet committed an entry of
    /// its term, or not applied all it committed, may miss a `Promote` (or a
    /// removal) an earlier leader applied, and would refuse a write the apply takes;
    /// it leaves the decision to the apply.
    pub(super) fn check_standby(&self, region: RegionId, ops: &[Op]) -> Result<()> {
        if region == DIRECTORY {
            return Ok(());
        }
        let caught_up = self.replicas.get(&region).is_some_and(|r| {
            r.has_committed_in_its_term() && r.applied_index >= r.raw.raft.raft_log.committed
        });
        if !caught_up {
            return Ok(());
        }
        let engine = self.ctx.engine_of(region);
        if let Some(dup_id) = engine.standby_of(region, ops.iter().map(Op::key)) {
            return Err(Error::StandbyReadOnly { region, dup_id });
        }
        // A key a cutover fences on the source side: refused early too.
        match engine.fenced_of(region, ops.iter().map(Op::key)) {
            Some(dup_id) => Err(Error::DupFenced { region, dup_id }),
            None => Ok(()),
        }
    }

    /// `replica`'s sink state, once it holds data.
    pub(super) fn sinks_of(&self, replica: &Replica) -> Option<SinkTable> {
        if !replica.is_initialized() || replica.region.id == DIRECTORY {
            return None;
        }
        self.ctx.engine_of(replica.region.id).sink_table(replica.region.id)
    }
}

/// Refuses a command whose writes the engine would refuse part of: a key or value over
/// its limits, or more bytes than one round takes (a `Begin`'s wipe is bounded by the
/// region's keys, written as deletes). Depends on the command and the store's
/// configuration only.
fn check_sink_limits(applier: &Applier<'_>, cmd: &SinkCmd) -> Result<()> {
    let pairs: Vec<(usize, usize)> = match cmd {
        SinkCmd::Chunk { puts, .. } => puts.iter().map(|(k, v)| (k.len(), v.len())).collect(),
        SinkCmd::Apply { ops, .. } => {
            ops.iter().map(|op| (op.key.len(), op.value.as_ref().map_or(0, Vec::len))).collect()
        }
        SinkCmd::Begin { .. } | SinkCmd::End { .. } | SinkCmd::Promote => return Ok(()),
    };
    let (max_key, max_value) = (applier.engine.max_key_bytes(), applier.engine.max_value_bytes());
    let mut bytes = 0usize;
    for (k, v) in pairs {
        if k > max_key || v > max_value {
            return Err(Error::InvalidRequest(format!(
                "a key of {k} bytes or a value of {v} bytes is over the limits ({max_key} and \
                 {max_value} bytes)"
            )));
        }
        bytes = bytes.saturating_add(k + v);
    }
    if bytes > applier.max_bytes {
        return Err(Error::InvalidRequest(format!(
            "a sink command of {bytes} bytes is over the limit of {} bytes",
            applier.max_bytes
        )));
    }
    Ok(())
}
