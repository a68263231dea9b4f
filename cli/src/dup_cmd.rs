//! `regionkv client dup add|list|status|pause|resume|remove|reseed|fence`: duplications of a
//! key range to another cluster (ARCHITECTURE.md, "Duplication (directory records,
//! `Db` surfaces, driver)").

use regionkv::{Db, DupReport, DupSpec, DupTarget};

use crate::args::DupOp;

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn report_json(r: &DupReport) -> serde_json::Value {
    serde_json::json!({
        "id": r.dup_id,
        "status": r.status.name(),
        "incarnation": r.incarnation,
        "broken": r.broken.map(regionkv::BrokenReason::name),
        "start": show(&r.start),
        "end": r.end.as_deref().map(show),
        "to": r.target,
        "seed": r.seed,
        "regions": r.regions.iter().map(|g| serde_json::json!({
            "region": g.region.0,
            "leader": g.leader.map(|s| s.0),
            "frozen": g.frozen,
            "stage": g.state.as_ref().map(|s| format!("{:?}", s.stage).to_lowercase()),
            "incarnation": g.state.as_ref().map(|s| s.incarnation),
            "min_ckpt_index": g.state.as_ref().map(|s| s.min_ckpt_index),
            "seed_index": g.state.as_ref().and_then(|s| s.seed_index),
            "confirmed": g.state.as_ref().and_then(|s| s.confirmed),
        })).collect::<Vec<_>>(),
    })
}

fn report_line(r: &DupReport) -> String {
    let end = r.end.as_deref().map_or_else(|| "(unbounded)".into(), |e| format!("{:?}", show(e)));
    let broken = r.broken.map_or_else(String::new, |b| format!(" ({})", b.name()));
    format!(
        "duplication {}: {}{broken}, incarnation {}, [{:?}, {end}) to {}{}",
        r.dup_id,
        r.status.name(),
        r.incarnation,
        show(&r.start),
        r.target,
        if r.seed { "" } else { ", not seeded" }
    )
}

fn print_regions(r: &DupReport) {
    for g in &r.regions {
        let leader = g.leader.map_or_else(|| "no leader answered".into(), |s| format!("store {s}"));
        let state = match (&g.state, g.frozen) {
            (_, true) => "frozen (a stage or format this binary does not know)".into(),
            (None, false) => "not started".into(),
            (Some(s), false) => format!(
                "{:?}, incarnation {}, min ckpt index {}, seed index {}, confirmed {}",
                s.stage,
                s.incarnation,
                s.min_ckpt_index,
                s.seed_index.map_or_else(|| "-".into(), |i| i.to_string()),
                s.confirmed.map_or_else(|| "-".into(), |i| i.to_string()),
            ),
        };
        println!("  region {} ({leader}): {state}", g.region);
    }
}

/// Runs one `dup` subcommand through `db`; answers what `--json` prints.
pub(crate) fn run_dup(
    db: &Db,
    op: DupOp,
    json: bool,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let done = |what: &str, id: u64| {
        if !json {
            println!("duplication {id}: {what}");
        }
        serde_json::json!({"ok": true, "id": id})
    };
    Ok(match op {
        DupOp::Add { to, to_cluster_id, to_secret_file, start, end, no_seed } => {
            let secret = crate::args::read_secret(None, Some(to_secret_file))?;
            let spec = DupSpec {
                start: start.into_bytes(),
                end: end.map(String::into_bytes),
                target: DupTarget::Remote { addrs: to, cluster_id: to_cluster_id, secret },
                seed: !no_seed,
            };
            let id = db.add_duplication(spec)?;
            done("added", id)
        }
        DupOp::List => {
            let all = db.duplication_status(None)?;
            if !json {
                for r in &all {
                    println!("{}", report_line(r));
                }
                println!("{} duplications", all.len());
            }
            serde_json::json!(all.iter().map(report_json).collect::<Vec<_>>())
        }
        DupOp::Status { id } => {
            let report = db.duplication_status(Some(id))?.remove(0);
            if !json {
                println!("{}", report_line(&report));
                print_regions(&report);
            }
            report_json(&report)
        }
        DupOp::Pause { id } => {
            db.pause_duplication(id)?;
            done("paused", id)
        }
        DupOp::Resume { id } => {
            db.resume_duplication(id)?;
            done("resumed", id)
        }
        DupOp::Remove { id } => {
            db.remove_duplication(id)?;
            done("removed (the regions release their log, then the record goes)", id)
        }
        DupOp::Reseed { id } => {
            db.reseed_duplication(id)?;
            done("reseeding (a new incarnation)", id)
        }
        DupOp::Fence { id } => {
            let report = db.fence_duplication(id)?;
            if !json {
                for r in &report.regions {
                    println!(
                        "region {}: fenced at index {}",
                        r.region,
                        r.fenced_at.map_or_else(|| "-".to_owned(), |i| i.to_string())
                    );
                }
            }
            done("fenced (cutting over: writes to the range are refused)", id)
        }
    })
}
