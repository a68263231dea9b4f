//! `regionkv client txn list|recover|status`: transactions left in doubt, and the
//! recovery daemon that finishes them (ARCHITECTURE.md, "The recovery daemon").

use std::time::Duration;

use regionkv::{Client, RegionId, TxnEntry, TxnOutcome, TxnRecoveryTurn};

use crate::args::TxnOp;

/// An age: a number and a unit (`ms`, `s`, `m`, `h`), e.g. `30s`.
pub(crate) fn parse_age(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 30s"))?;
    let ms = match unit {
        "ms" => n,
        "s" | "" => n.saturating_mul(1_000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("{s:?}: the unit is one of ms, s, m, h")),
    };
    Ok(Duration::from_millis(ms))
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn entry_json(e: &TxnEntry) -> serde_json::Value {
    serde_json::json!({
        "region": e.region.0,
        "store": e.store.0,
        "kind": e.kind,
        "key": show(&e.key),
        "txn_id": e.txn_id,
        "primary_key": e.primary_key.as_deref().map(show),
        "state": e.state,
        "age_ms": e.age_ms,
        "expires_at_ms": e.expires_at_ms,
        "in_doubt": e.in_doubt,
    })
}

fn entry_line(e: &TxnEntry) -> String {
    let txn = e.txn_id.map_or_else(|| "?".into(), |t| t.to_string());
    let age = e.age_ms.map_or_else(|| "age unknown".into(), |a| format!("age {a} ms"));
    let doubt = if e.in_doubt { ", in doubt" } else { "" };
    format!(
        "region {} (store {}): {} {:?} txn {txn} {}; {age}{doubt}",
        e.region,
        e.store,
        e.kind,
        show(&e.key),
        e.state
    )
}

fn turn_json(t: &TxnRecoveryTurn) -> serde_json::Value {
    serde_json::json!({
        "store": t.store.0,
        "deferred": t.deferred.map(regionkv::TxnGate::label),
        "regions": t.regions.iter().map(|r| r.0).collect::<Vec<_>>(),
        "resolved_committed": t.resolved_committed,
        "resolved_aborted": t.resolved_aborted,
        "aborted_in_doubt": t.aborted_in_doubt,
        "forgotten": t.forgotten,
        "in_doubt": t.in_doubt,
        "unreadable": t.unreadable,
        "frozen": t.frozen,
        "errors": t.errors,
    })
}

fn turn_line(t: &TxnRecoveryTurn) -> String {
    if let Some(gate) = t.deferred {
        return format!("store {}: deferred (gate {gate} closed)", t.store);
    }
    format!(
        "store {}: {} regions; resolved {} committed, {} aborted; {} in doubt aborted; {} forgotten; unreadable {:?}; frozen {:?}; {} errors",
        t.store,
        t.regions.len(),
        t.resolved_committed,
        t.resolved_aborted,
        t.aborted_in_doubt,
        t.forgotten,
        t.unreadable,
        t.frozen,
        t.errors.len()
    )
}

/// Runs `regionkv client txn OP`; prints text unless `json` (the caller prints JSON).
pub(crate) fn run_txn(
    client: &Client,
    op: TxnOp,
    json: bool,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    Ok(match op {
        TxnOp::List { in_doubt, older_than, .. } => {
            let entries = client.txn_list(in_doubt, older_than)?;
            if !json {
                for e in &entries {
                    println!("{}", entry_line(e));
                }
                println!("{} entries", entries.len());
            }
            serde_json::json!(entries.iter().map(entry_json).collect::<Vec<_>>())
        }
        TxnOp::Recover { region, .. } => {
            let turns = client.txn_recover(region.map(RegionId))?;
            if !json {
                for t in &turns {
                    println!("{}", turn_line(t));
                }
            }
            serde_json::json!(turns.iter().map(turn_json).collect::<Vec<_>>())
        }
        TxnOp::Status { txn_id, primary_key } => {
            let outcome = match client.db().txn_outcome(txn_id, primary_key.as_bytes())? {
                TxnOutcome::Committed => "committed",
                TxnOutcome::Aborted => "aborted",
                TxnOutcome::Pending => "pending",
                TxnOutcome::Unknown => "unknown (no record: forgotten long ago, or never written)",
            };
            if !json {
                println!("txn {txn_id}: {outcome}");
            }
            serde_json::json!({"txn_id": txn_id, "outcome": outcome})
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_age;

    #[test]
    fn ages_parse_with_their_unit() {
        assert_eq!(parse_age("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_age("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_age("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_age("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_age("7"), Ok(Duration::from_secs(7)));
        assert!(parse_age("s").is_err() && parse_age("3d").is_err() && parse_age("").is_err());
    }
}
