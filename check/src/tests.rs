//! The checker on histories whose verdict is known: hand-written ones (each bad one is
//! a bug a store could have), and random ones generated from a sequential register
//! (always linearizable) or corrupted by a read of a value never written (never).

use proptest::prelude::*;

use super::*;

type Rec = Recorder<&'static str, u32>;

/// A call invoked and returned at once, on one thread.
fn seq(rec: &Rec, op: Op<u32>, read: Option<u32>) {
    let c = rec.invoke("k", op);
    rec.ok(c, read);
}

fn verdict(rec: &Rec) -> Report {
    check(&rec.history(), 1_000_000)
}

#[test]
fn a_sequential_history_is_linearizable() {
    let rec = Rec::new();
    seq(&rec, Op::Get, None);
    seq(&rec, Op::Put(1), None);
    seq(&rec, Op::Get, Some(1));
    seq(&rec, Op::Delete, None);
    seq(&rec, Op::Get, None);
    let report = verdict(&rec);
    assert!(report.is_linearizable(), "{report}");
    assert_eq!((report.keys, report.operations), (1, 5));
}

#[test]
fn a_stale_read_after_a_completed_write_is_caught() {
    let rec = Rec::new();
    seq(&rec, Op::Put(1), None);
    seq(&rec, Op::Put(2), None);
    seq(&rec, Op::Get, Some(1)); // a follower that missed the second write
    let report = verdict(&rec);
    assert_eq!(report.violations.len(), 1, "{report}");
}

#[test]
fn a_lost_acknowledged_write_is_caught() {
    let rec = Rec::new();
    seq(&rec, Op::Put(1), None);
    seq(&rec, Op::Get, None); // the write vanished after it was acknowledged
    assert!(!verdict(&rec).is_linearizable());
}

#[test]
fn a_value_never_written_is_caught() {
    let rec = Rec::new();
    seq(&rec, Op::Put(1), None);
    seq(&rec, Op::Get, Some(7));
    assert!(!verdict(&rec).is_linearizable());
}

#[test]
fn concurrent_writes_may_be_read_in_either_order() {
    let rec = Rec::new();
    let a = rec.invoke("k", Op::Put(1));
    let b = rec.invoke("k", Op::Put(2));
    rec.ok(b, None);
    rec.ok(a, None);
    seq(&rec, Op::Get, Some(1)); // 2 then 1 is a valid order
    assert!(verdict(&rec).is_linearizable());
}

#[test]
fn reads_that_see_two_concurrent_writes_in_both_orders_are_caught() {
    let rec = Rec::new();
    let a = rec.invoke("k", Op::Put(1));
    let b = rec.invoke("k", Op::Put(2));
    rec.ok(a, None);
    rec.ok(b, None);
    seq(&rec, Op::Get, Some(1));
    seq(&rec, Op::Get, Some(2)); // after both returned, the value cannot change back
    assert!(!verdict(&rec).is_linearizable());
}

#[test]
fn an_open_write_may_take_effect_late_or_never() {
    let rec = Rec::new();
    let w = rec.invoke("k", Op::Put(1));
    rec.unknown(w);
    seq(&rec, Op::Get, None); // not yet
    seq(&rec, Op::Get, Some(1)); // now
    assert!(verdict(&rec).is_linearizable());

    let never = Rec::new();
    let w = never.invoke("k", Op::Put(1));
    never.unknown(w);
    seq(&never, Op::Get, None);
    assert!(verdict(&never).is_linearizable());
}

#[test]
fn an_open_write_applied_twice_is_caught() {
    // A write whose outcome was unknown is retried and applied again after a newer
    // write: readers see 1, then 2, then 1 again, while the write is one operation.
    let rec = Rec::new();
    let w1 = rec.invoke("k", Op::Put(1));
    rec.unknown(w1);
    seq(&rec, Op::Get, Some(1));
    seq(&rec, Op::Put(2), None);
    seq(&rec, Op::Get, Some(2));
    seq(&rec, Op::Get, Some(1));
    let report = verdict(&rec);
    assert_eq!(report.violations.len(), 1, "{report}");
}

#[test]
fn failed_calls_and_reads_without_an_answer_are_dropped() {
    let rec = Rec::new();
    let w = rec.invoke("k", Op::Put(9));
    rec.failed(w); // refused before it was proposed
    let r = rec.invoke("k", Op::Get);
    rec.unknown(r); // a read that timed out says nothing
    seq(&rec, Op::Get, None);
    let report = verdict(&rec);
    assert!(report.is_linearizable(), "{report}");
    assert_eq!(report.operations, 1);
}

#[test]
fn keys_are_checked_apart() {
    let rec: Recorder<&'static str, u32> = Recorder::new();
    let c = rec.invoke("a", Op::Put(1));
    rec.ok(c, None);
    let c = rec.invoke("b", Op::Get);
    rec.ok(c, None); // "b" was never written: fine, whatever "a" holds
    let c = rec.invoke("b", Op::Get);
    rec.ok(c, Some(1)); // but "a"'s value must not show up under "b"
    let report = check(&rec.history(), 1_000);
    assert_eq!((report.keys, report.violations.len()), (2, 1), "{report}");
}

#[test]
fn a_search_over_budget_is_inconclusive_not_passing() {
    let rec = Rec::new();
    let calls: Vec<Call> = (0..12).map(|i| rec.invoke("k", Op::Put(i))).collect();
    for c in calls {
        rec.ok(c, None);
    }
    seq(&rec, Op::Get, Some(99));
    let report = check(&rec.history(), 10);
    assert!(!report.is_linearizable());
    assert_eq!(report.inconclusive.len(), 1, "{report}");
}

/// One client step of a generated run: which client acts, and what it does.
#[derive(Clone, Debug)]
enum Step {
    Invoke { client: usize, op: Op<u32> },
    Return { client: usize },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let op = prop_oneof![Just(Op::Get), (0u32..4).prop_map(Op::Put), Just(Op::Delete)];
    prop::collection::vec(
        prop_oneof![
            (0usize..4, op).prop_map(|(client, op)| Step::Invoke { client, op }),
            (0usize..4).prop_map(|client| Step::Return { client }),
        ],
        0..60,
    )
}

/// Runs the steps against a real register: each operation takes effect at a point
/// between its invocation and its return (here: at invocation), so the history is
/// linearizable by construction. With `corrupt`, one get that returned reports a value
/// no operation ever wrote.
fn run(steps: &[Step], corrupt: bool) -> (Rec, bool) {
    let rec = Rec::new();
    let mut register: Option<u32> = None;
    let mut open: Vec<Option<(Call, Option<u32>)>> = vec![None; 4];
    let mut corrupted = false;
    for step in steps {
        match step {
            Step::Invoke { client, op } if open[*client].is_none() => {
                let call = rec.invoke("k", op.clone());
                let read = match op {
                    Op::Get => register,
                    Op::Put(v) => {
                        register = Some(*v);
                        None
                    }
                    Op::Delete => {
                        register = None;
                        None
                    }
                };
                open[*client] = Some((call, read));
            }
            Step::Return { client } => {
                if let Some((call, read)) = open[*client].take() {
                    let read = if corrupt && !corrupted && rec.calls.lock()[call.0].op == Op::Get {
                        corrupted = true;
                        Some(1000)
                    } else {
                        read
                    };
                    rec.ok(call, read);
                }
            }
            Step::Invoke { .. } => {}
        }
    }
    // Calls still in flight at the end: their outcome is unknown.
    for (call, _) in open.into_iter().flatten() {
        rec.unknown(call);
    }
    (rec, corrupted)
}

proptest! {
    #[test]
    fn histories_of_a_real_register_pass(steps in steps()) {
        let (rec, _) = run(&steps, false);
        let report = check(&rec.history(), 1_000_000);
        prop_assert!(report.is_linearizable(), "{}", report);
    }

    #[test]
    fn a_read_of_a_value_never_written_always_fails(steps in steps()) {
        let (rec, corrupted) = run(&steps, true);
        let report = check(&rec.history(), 1_000_000);
        prop_assert_eq!(report.is_linearizable(), !corrupted, "{}", report);
    }
}
