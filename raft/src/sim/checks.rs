//! The simulator's checkers, run after every event (the properties are listed in the
//! module doc of `sim`): a violation panics with the seed.

use regionkv_engine::StoreId;

use super::{Checks, SimCluster, StateRole};

impl SimCluster {
    pub(super) fn check(&mut self) {
        let mut statuses = Vec::new();
        let mut pinned = Vec::new();
        let mut stopped = Vec::new();
        let mut unlisted = Vec::new();
        let mut retention = Vec::new();
        for (&id, s) in &self.stores {
            if let Some(r) = &s.running {
                retention.push((id, r.core.dup_retention()));
                if r.core.context().cancel.is_cancelled() {
                    stopped.push(id);
                }
                if !r.core.remote_peers_listed() {
                    unlisted.push(id);
                }
                statuses.push((id, r.core.status()));
                // Between flushes no write-batch round is open: every pin taken by a
                // round was released exactly once.
                let pins = r.engine.total_pins();
                if pins != 0 {
                    pinned.push((id, pins));
                }
            }
        }
        let mut c = self.checks.lock();
        if let Some((id, pins)) = pinned.first()
            && c.violation.is_none()
        {
            c.violation = Some(format!("5.1: store {id} holds {pins} region pins between rounds"));
        }
        if let Some(id) = stopped.first()
            && c.violation.is_none()
        {
            c.violation = Some(format!("A1: store {id} stopped, and no disk failed"));
        }
        if let Some(id) = unlisted.first()
            && c.violation.is_none()
        {
            c.violation = Some(format!("alone: store {id} lists the wrong replicas as not alone"));
        }
        check_retention(&mut c, retention);
        for (id, status) in statuses {
            for s in status {
                let region = s.region.id;
                if s.role == StateRole::Leader
                    && let Some(&other) = c.leaders.get(&(region, s.term))
                    && other != id
                    && c.violation.is_none()
                {
                    c.violation = Some(format!(
                        "P5: stores {other} and {id} both led region {region} in term {}",
                        s.term
                    ));
                }
                if s.role == StateRole::Leader {
                    c.leaders.insert((region, s.term), id);
                }
                let epoch = c.durable_max.get(&(id, region)).copied().unwrap_or_default();
                let term = c.durable_term.get(&(id, region)).copied().unwrap_or_default();
                if (s.term < term || !s.region.epoch.covers(epoch))
                    && s.initialized
                    && c.violation.is_none()
                {
                    c.violation = Some(format!(
                        "P7: store {id} region {region}: term {} epoch {} after durable term {term} epoch {epoch}",
                        s.term, s.region.epoch
                    ));
                }
                if s.initialized {
                    c.durable_max.insert((id, region), s.region.epoch);
                }
                let (commit, applied) =
                    c.running_max.get(&(id, region, s.peer)).copied().unwrap_or_default();
                if (s.commit < commit || s.applied < applied) && c.violation.is_none() {
                    c.violation = Some(format!(
                        "P7: store {id} region {region}: commit {} applied {} after {commit} {applied}",
                        s.commit, s.applied
                    ));
                }
                let max = (s.commit.max(commit), s.applied.max(applied));
                c.running_max.insert((id, region, s.peer), max);
            }
        }
        if let Some(v) = &c.violation {
            panic!("seed {}: {v}", self.config.seed);
        }
    }
}

/// D1: a log start that moved since the last check (a compaction or a snapshot
/// install) is past the duplication floor only if a snapshot put it there.
fn check_retention(c: &mut Checks, retention: Vec<(StoreId, Vec<crate::DupRetention>)>) {
    for (id, replicas) in retention {
        for r in replicas {
            let key = (id, r.region, r.peer);
            let moved = c.first_index.insert(key, r.first_index) != Some(r.first_index);
            let compacted = r.first_index - 1;
            if moved
                && let Some(floor) = r.floor
                && compacted > floor
                && r.installed_at != Some(compacted)
                && c.violation.is_none()
            {
                c.violation = Some(format!(
                    "D1: store {id} region {}: log compacted to {compacted}, past its \
                     duplication floor {floor}",
                    r.region
                ));
            }
        }
    }
}
