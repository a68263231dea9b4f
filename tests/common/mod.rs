//! Helpers shared by the facade's integration tests.

#![allow(dead_code, reason = "each test file uses its own subset")]

use std::collections::BTreeMap;

use regionkv::Db;

/// Checks that a scan across every region returns exactly `model`, each key once, and
/// that point reads of a sample of its keys agree.
pub fn check_all(db: &Db, model: &BTreeMap<String, String>) {
    let rows = db.scan(.., usize::MAX).unwrap();
    let got: BTreeMap<String, String> = rows
        .into_iter()
        .map(|(k, v)| {
            (String::from_utf8(k.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap())
        })
        .collect();
    assert_eq!(&got, model, "a scan across every region returns each key once");
    for (k, v) in model.iter().step_by(17) {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(v.as_bytes()));
    }
}
