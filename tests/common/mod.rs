//! Helpers shared by the facade's integration tests.

#![allow(dead_code, reason = "each test file uses its own subset")]

use std::collections::BTreeMap;

use bytes::Bytes;
use regionkv::{Cluster, Db};
use regionkv_check::{Op, Recorder};

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

/// One recorded call of a linearizability run on `key`, chosen by `pick` (below 10):
/// a get below `gets`, a put of `value` below `puts`, a delete otherwise. A call that
/// fails is recorded as unknown: it may or may not have taken effect.
pub fn recorded_call(
    db: &Db,
    recorder: &Recorder<Bytes, Bytes>,
    key: &Bytes,
    pick: u64,
    (gets, puts): (u64, u64),
    value: Bytes,
) {
    if pick < gets {
        let call = recorder.invoke(key.clone(), Op::Get);
        match db.get(key) {
            Ok(read) => recorder.ok(call, read),
            Err(_) => recorder.unknown(call),
        }
    } else if pick < puts {
        let call = recorder.invoke(key.clone(), Op::Put(value.clone()));
        match db.put(&key[..], value) {
            Ok(()) => recorder.ok(call, None),
            Err(_) => recorder.unknown(call),
        }
    } else {
        let call = recorder.invoke(key.clone(), Op::Delete);
        match db.delete(&key[..]) {
            Ok(()) => recorder.ok(call, None),
            Err(_) => recorder.unknown(call),
        }
    }
}

/// A cluster of one store in `dir`, ticking every `tick`.
pub fn one_store(dir: &std::path::Path, tick: std::time::Duration) -> Cluster {
    Cluster::builder().dir(dir).stores(1).tick_interval(tick).build().unwrap()
}

/// `n` loopback addresses free a moment ago (each was bound, then released).
pub fn free_addrs(n: usize) -> Vec<std::net::SocketAddr> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// The configuration of node `id` (1-based) of a cluster bootstrapped on `addrs`, each
/// node listing the others as peers, with a fast tick.
pub fn node_config(
    dir: &std::path::Path,
    id: u64,
    addrs: &[std::net::SocketAddr],
    cluster: regionkv::ClusterId,
    secret: &[u8],
) -> regionkv::NodeConfig {
    let mut config = regionkv::NodeConfig::new(
        regionkv::StoreId(id),
        dir.join(format!("node-{id}")),
        addrs[id as usize - 1],
        cluster,
        secret.to_vec(),
    );
    config.tick_interval = std::time::Duration::from_millis(20);
    config = config.bootstrap();
    for (i, addr) in addrs.iter().enumerate() {
        let peer = i as u64 + 1;
        if peer != id {
            config = config.peer(regionkv::StoreId(peer), *addr);
        }
    }
    config
}
