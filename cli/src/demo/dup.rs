//! Phase 7 of the demo: duplication to a second cluster in this process. A
//! three-store source cluster cut into three regions; a duplication of the keys from
//! `m` on is added; the background work starts every region the range covers (each
//! keeps its log for it: its floor), seeds the follower with each region's image,
//! then ships the log after it. Store 1 of the source is killed and restarted while
//! writes go on; the follower's copy of the range must equal the source's, and its
//! clients may not write there (a read-only standby). Store 2 of the follower is
//! killed and restarted while shipping goes on; the duplication is verified (the
//! fingerprints of source and follower at one source position, printed), then cut
//! over: the source range is fenced, its log shipped to the fence, the follower
//! promoted; the follower takes a write, the source refuses one.

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
    let cluster =
        Cluster::builder().dir(dir.join("source")).stores(3).build().map_err(verify_err)?;
    let standby =
        Cluster::builder().dir(dir.join("standby")).stores(3).build().map_err(verify_err)?;
    cluster.add_duplication_target("standby", standby.db());
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
    let all = wait_for(&db, "the seed loaded", |all| {
        all.iter().any(|r| r.dup_id == id && r.status == DuplicationStatus::Log)
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
    writeln!(
        out,
        "   seeded; now shipping the log; store 1 of the source is killed and restarted meanwhile"
    )?;
    for round in 0..30u32 {
        if round == 10 {
            cluster.kill_store(1).map_err(verify_err)?;
        }
        if round == 20 {
            cluster.restart_store(1).map_err(verify_err)?;
        }
        for key in ["apple", "mango", "melon", "pear", "zucchini"] {
            db.put(key, round.to_string()).map_err(verify_err)?;
        }
    }
    db.delete("pear").map_err(verify_err)?;
    let follower = standby.db();
    let copy = |db: &Db| db.scan(b"m".to_vec().., usize::MAX).map_err(verify_err);
    let deadline = Instant::now() + STEP_MAX;
    while copy(&follower)? != copy(&db)? {
        if Instant::now() > deadline {
            return Err(DemoError::Verify("the follower never caught up".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rows = copy(&follower)?.len();
    if follower.get("apple").map_err(verify_err)?.is_some() {
        return Err(DemoError::Verify("a key outside the range was shipped".into()));
    }
    if follower.put("mango", "mine").is_ok() {
        return Err(DemoError::Verify(
            "the follower took a client write in its standby range".into(),
        ));
    }
    writeln!(
        out,
        "   the follower's [\"m\", ..) equals the source's ({rows} keys, a delete included); outside it nothing; its clients may not write there"
    )?;
    follower_restart(&db, &standby, out)?;
    verify_and_cut_over(&db, &follower, id, out)
}

/// Store 2 of the follower is killed and restarted while the source writes on.
fn follower_restart(db: &Db, standby: &Cluster, out: &mut dyn Write) -> Result<(), DemoError> {
    writeln!(out, "   store 2 of the follower is killed and restarted while shipping")?;
    for round in 30..50u32 {
        if round == 35 {
            standby.kill_store(2).map_err(verify_err)?;
        }
        if round == 45 {
            standby.restart_store(2).map_err(verify_err)?;
        }
        for key in ["mango", "melon", "zucchini"] {
            db.put(key, round.to_string()).map_err(verify_err)?;
        }
    }
    Ok(())
}

/// Verifies the duplication (fingerprints at one source position), then cuts over:
/// the source refuses a write to the range, the follower takes one.
fn verify_and_cut_over(
    db: &Db,
    follower: &Db,
    id: u64,
    out: &mut dyn Write,
) -> Result<(), DemoError> {
    let report = db.verify_duplication(id).map_err(verify_err)?;
    for r in &report.regions {
        let (Some(s), Some(f)) = (r.source, r.follower) else {
            return Err(DemoError::Verify(format!("region {} not verified: {r:?}", r.region)));
        };
        writeln!(
            out,
            "   verify: region {} at source index {}: source {:016x} ({} keys), follower {:016x} ({} keys): {:?}",
            r.region,
            r.source_index.unwrap_or(0),
            s.hash,
            s.pairs,
            f.hash,
            f.pairs,
            r.outcome
        )?;
    }
    if !report.all_match() {
        return Err(DemoError::Verify(format!("the fingerprints differ: {report:?}")));
    }
    let cut = db.cutover_duplication(id).map_err(verify_err)?;
    for r in &cut.regions {
        writeln!(
            out,
            "   cutover: region {} fenced at index {}, confirmed {}, RPO {} entries",
            r.region,
            r.fenced_at.unwrap_or(0),
            r.confirmed.unwrap_or(0),
            r.rpo_entries.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
        )?;
    }
    if !cut.promoted || cut.regions.iter().any(|r| r.rpo_entries != Some(0)) {
        return Err(DemoError::Verify(format!("the cutover lost writes: {cut:?}")));
    }
    follower.put("mango", "written on the follower").map_err(verify_err)?;
    match db.put("mango", "late") {
        Err(e) => {
            writeln!(
                out,
                "   the follower took a write to \"mango\"; the source refused one: {e}"
            )?;
        }
        Ok(()) => {
            return Err(DemoError::Verify("the source took a write after the cutover".into()));
        }
    }
    Ok(())
}
