//! Phase 7 of the demo: duplication, as far as it is built. A three-store cluster cut
//! into three regions; a duplication of the keys from `m` on to another cluster is
//! added; the background work starts every region the range covers (each keeps its
//! log from then on for it: its floor) and moves the duplication to `Prepare`; the
//! region before `m` takes no part. Then it is removed: every region releases its log
//! and the record goes. (Seeding the follower and shipping the log are next.)

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use regionkv::{Cluster, Db, DupReport, DupSpec, DupTarget, DuplicationStatus};

use super::DemoError;

/// The longest the demo waits for any one step.
const STEP_MAX: Duration = Duration::from_secs(60);

fn verify_err(e: impl std::fmt::Display) -> DemoError {
    DemoError::Verify(e.to_string())
}

fn wait_for(
    db: &Db,
    what: &str,
    done: impl Fn(&[DupReport]) -> bool,
) -> Result<Vec<DupReport>, DemoError> {
    let deadline = Instant::now() + STEP_MAX;
    loop {
        let all = db.duplication_status(None).map_err(verify_err)?;
        if done(&all) {
            return Ok(all);
        }
        if Instant::now() > deadline {
            return Err(DemoError::Verify(format!("{what}: not after {STEP_MAX:?}: {all:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the phase in `dir`, printing to `out`.
pub(crate) fn dup_phase(dir: &Path, out: &mut dyn Write) -> Result<(), DemoError> {
    let cluster = Cluster::builder().dir(dir).stores(3).build().map_err(verify_err)?;
    let db = cluster.db();
    cluster.split_keys(&["g", "m"]).map_err(verify_err)?;
    for key in ["apple", "kiwi", "mango", "pear"] {
        db.put(key, "1").map_err(verify_err)?;
    }
    let spec = DupSpec {
        start: b"m".to_vec(),
        end: None,
        target: DupTarget::InProcess("standby".into()),
        seed: true,
    };
    let id = db.add_duplication(spec).map_err(verify_err)?;
    writeln!(out, "   duplication {id} of [\"m\", ..) to \"standby\" added (Init)")?;
    let all = wait_for(&db, "every covered region started", |all| {
        all.iter().any(|r| r.dup_id == id && r.status == DuplicationStatus::Prepare)
    })?;
    let report = all.iter().find(|r| r.dup_id == id).ok_or_else(|| verify_err("no report"))?;
    for region in &report.regions {
        let Some(state) = &region.state else {
            return Err(DemoError::Verify(format!("region {} holds no state", region.region)));
        };
        writeln!(
            out,
            "   region {}: {:?}, its log kept from index {} (the start's own index) for the duplication",
            region.region, state.stage, state.min_ckpt_index
        )?;
    }
    if report.regions.len() != 1 {
        return Err(DemoError::Verify(format!("[m, ..) is one region: {report:?}")));
    }
    db.remove_duplication(id).map_err(verify_err)?;
    wait_for(&db, "the duplication dropped", <[DupReport]>::is_empty)?;
    writeln!(out, "   removed: every region released its log and the record is gone")?;
    Ok(())
}
