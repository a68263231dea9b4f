//! `regionkv client health [audit]`: the health monitor's analyses and its audit, as
//! text or JSON (the demo prints the same text).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use regionkv::StoreId;
use regionkv::health::{
    AuditEntry, HealthReport, Liveness, PlannedRepair, StoreLifecycle, Subject,
};

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn subject_json(s: Subject) -> serde_json::Value {
    match s {
        Subject::Region(r) => serde_json::json!({"region": r.0}),
        Subject::Store(s) => serde_json::json!({"store": s.0}),
        Subject::Cluster => serde_json::json!("cluster"),
    }
}

fn repair_json(p: &PlannedRepair) -> serde_json::Value {
    serde_json::json!({
        "kind": p.kind.name(),
        "region": p.region.0,
        "reason": p.reason.name(),
        "remove": p.remove.map(|s| s.0),
    })
}

fn repair_line(p: &PlannedRepair) -> String {
    let remove = p.remove.map_or_else(String::new, |s| format!(", off store {s}"));
    format!("{} region {}{remove} (for {})", p.kind.name(), p.region, p.reason)
}

fn liveness_text(l: Liveness) -> String {
    match l {
        Liveness::Up => "up".into(),
        Liveness::Unknown => "not heard from yet".into(),
        Liveness::Down { since } => format!("down since {:.1}s", secs(since)),
    }
}

/// The analyses that could not conclude, grouped by analysis and field: (analysis,
/// field) -> (subjects, the stores that did not report it).
fn insufficient_groups(
    report: &HealthReport,
) -> BTreeMap<(String, String), (Vec<String>, BTreeSet<StoreId>)> {
    let mut groups: BTreeMap<(String, String), (Vec<String>, BTreeSet<StoreId>)> = BTreeMap::new();
    for i in &report.insufficient {
        let key = (i.code.name().to_owned(), i.missing.field.name().to_owned());
        let (subjects, stores) = groups.entry(key).or_default();
        subjects.push(i.subject.to_string());
        stores.extend(i.missing.store);
    }
    groups
}

/// Lines describing `report`, for people.
pub(crate) fn report_lines(report: &HealthReport) -> Vec<String> {
    let mut out = Vec::new();
    let mode = if report.dry_run { " (dry run: repairs are planned, not made)" } else { "" };
    out.push(format!("health at {:.1}s of the monitor's clock{mode}", secs(report.at)));
    if report.detections.is_empty() {
        out.push("  no problem detected".into());
    }
    for d in &report.detections {
        out.push(format!(
            "  {:<8} {} on {}: {} (since {:.1}s)",
            d.priority.name(),
            d.code,
            d.subject,
            d.detail,
            secs(d.since)
        ));
    }
    let groups = insufficient_groups(report);
    if !groups.is_empty() {
        out.push("  could not conclude (a field was not reported; nothing is repaired):".into());
        for ((code, field), (subjects, stores)) in &groups {
            let by = if stores.is_empty() {
                String::new()
            } else {
                let stores: Vec<String> = stores.iter().map(ToString::to_string).collect();
                format!(" by store {}", stores.join(", "))
            };
            out.push(format!("    {code}: {field} not reported{by} ({})", subjects.join(", ")));
        }
    }
    for p in &report.planned {
        out.push(format!("  planned: {}", repair_line(p)));
    }
    for s in &report.stores {
        let report = s.report.as_ref().map_or_else(
            || "no report".to_string(),
            |(schema, binary, lifecycle)| {
                format!(
                    "status schema {schema}, binary {}, {}",
                    binary.as_deref().unwrap_or("unknown"),
                    lifecycle.map_or("lifecycle unknown", |l| l.name())
                )
            },
        );
        out.push(format!(
            "  store {}: {}; {} replicas, {} leaders; {report}",
            s.store,
            liveness_text(s.liveness),
            s.replicas,
            s.leaders
        ));
    }
    if report.repairs_deferred > 0 {
        out.push(format!(
            "  {} turns' repairs waited: the cluster version does not allow recording them yet \
             (regionkv client upgrade finalize)",
            report.repairs_deferred
        ));
    }
    if report.skipped > 0 {
        out.push(format!(
            "  {} entries of a newer node were left out (names this binary does not know)",
            report.skipped
        ));
    }
    out
}

/// Prints `report` (unless `json`); returns it as JSON.
pub(crate) fn report_output(report: &HealthReport, json: bool) -> serde_json::Value {
    if !json {
        for line in report_lines(report) {
            println!("{line}");
        }
    }
    serde_json::json!({
        "at_secs": secs(report.at),
        "healthy": report.is_healthy(),
        "dry_run": report.dry_run,
        "detections": report.detections.iter().map(|d| serde_json::json!({
            "analysis": d.code.name(),
            "priority": d.priority.name(),
            "subject": subject_json(d.subject),
            "detail": d.detail,
            "since_secs": secs(d.since),
        })).collect::<Vec<_>>(),
        "insufficient": insufficient_groups(report).into_iter().map(|((code, field), (subjects, stores))| {
            serde_json::json!({
                "analysis": code,
                "field": field,
                "subjects": subjects,
                "not_reported_by": stores.iter().map(|s| s.0).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
        "planned": report.planned.iter().map(repair_json).collect::<Vec<_>>(),
        "stores": report.stores.iter().map(|s| {
            let (liveness, down_since) = match s.liveness {
                Liveness::Up => ("up", None),
                Liveness::Unknown => ("unknown", None),
                Liveness::Down { since } => ("down", Some(secs(since))),
            };
            serde_json::json!({
                "store": s.store.0,
                "liveness": liveness,
                "down_since_secs": down_since,
                "status_schema": s.report.as_ref().map(|r| r.0),
                "binary_version": s.report.as_ref().and_then(|r| r.1.clone()),
                "lifecycle": s.report.as_ref().and_then(|r| r.2).map(StoreLifecycle::name),
                "replicas": s.replicas,
                "leaders": s.leaders,
            })
        }).collect::<Vec<_>>(),
        "insufficient_total": report.insufficient_total.iter().map(|(c, f, n)| {
            serde_json::json!({"analysis": c.name(), "field": f.name(), "count": n})
        }).collect::<Vec<_>>(),
        "repairs_total": report.repairs_total.iter().map(|(k, r, n)| {
            serde_json::json!({"kind": k.name(), "result": r, "count": n})
        }).collect::<Vec<_>>(),
        "skipped": report.skipped,
        "repairs_deferred": report.repairs_deferred,
    })
}

/// Lines describing the audit, for people.
pub(crate) fn audit_lines(entries: &[AuditEntry]) -> Vec<String> {
    if entries.is_empty() {
        return vec!["no repair was made".into()];
    }
    entries
        .iter()
        .map(|e| {
            format!("#{} at {:.1}s: {} — {}", e.seq, secs(e.at), repair_line(&e.repair), e.event)
        })
        .collect()
}

/// Prints the audit (unless `json`); returns it as JSON.
pub(crate) fn audit_output(entries: &[AuditEntry], json: bool) -> serde_json::Value {
    if !json {
        for line in audit_lines(entries) {
            println!("{line}");
        }
    }
    serde_json::json!(
        entries
            .iter()
            .map(|e| serde_json::json!({
                "seq": e.seq,
                "at_secs": secs(e.at),
                "repair": repair_json(&e.repair),
                "event": e.event,
            }))
            .collect::<Vec<_>>()
    )
}
