//! The [`Client`] of a cluster of nodes in other processes and how it connects
//! ([`ClientOptions`]): a face over [`RemoteStores`](super::RemoteStores).

use std::collections::BTreeMap;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::QueryResult;
use regionkv_raft::transport::handshake::ClusterId;
use regionkv_raft::transport::seal::LinkMode;

use super::{ADMIN_TIMEOUT, CALL_TIMEOUT, RemoteStores, STORE_CHANGE_TIMEOUT, dial, unexpected};
use crate::backend::Backend;
use crate::control::UpgradeStatus;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::proto::{self, ErrorCode, Request, Response, StoreStatus};
use crate::region_info::RegionInfo;
use crate::router::Router;

/// How a [`Client`] connects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Plaintext links (for benchmarks; the nodes must run `insecure` too): requests
    /// and answers go unencrypted and unauthenticated after the handshake. `false`
    /// (default): sealed links.
    pub insecure: bool,
}

impl ClientOptions {
    /// Options with plaintext links if `insecure`.
    pub fn insecure(insecure: bool) -> ClientOptions {
        ClientOptions { insecure }
    }
}

/// A client of a cluster of [`Node`](crate::Node)s in other processes, over the client
/// protocol: [`Client::db`] for reads and writes (routed to region leaders and retried
/// exactly like [`Cluster::db`](crate::Cluster::db)), and the cluster's admin requests.
///
/// ```no_run
/// use regionkv::{Client, ClusterId};
///
/// let addrs = ["127.0.0.1:7001".parse()?];
/// let client = Client::connect(&addrs, ClusterId(1), b"a cluster secret of 16+ bytes")?;
/// let db = client.db();
/// db.put(b"hello", b"world")?;
/// assert_eq!(db.get(b"hello")?.as_deref(), Some(&b"world"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Client {
    pub(super) remote: Arc<RemoteStores>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("stores", &self.remote.addrs()).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the nodes at `addrs` (any of the cluster's nodes; one that answers
    /// is enough) and learns every store's address from them. `secret` is the
    /// client secret the nodes were started with (their `client_secret`), or the
    /// cluster secret if they have none. Links are sealed (encrypted and
    /// authenticated); see [`Client::connect_with`] for plaintext ones.
    pub fn connect(
        addrs: &[SocketAddr],
        cluster: ClusterId,
        secret: impl AsRef<[u8]>,
    ) -> Result<Client> {
        Client::connect_with(addrs, cluster, secret, &ClientOptions::default())
    }

    /// [`Client::connect`] with `options`.
    pub fn connect_with(
        addrs: &[SocketAddr],
        cluster: ClusterId,
        secret: impl AsRef<[u8]>,
        options: &ClientOptions,
    ) -> Result<Client> {
        let key = proto::client_key(secret.as_ref());
        let link = LinkMode::from_insecure(options.insecure);
        let mut seeds = BTreeMap::new();
        let mut last = None;
        for &addr in addrs {
            match dial(addr, &key, cluster, proto::CLIENT_ID, link) {
                Ok((stream, authenticated)) => {
                    let _ = stream.shutdown(Shutdown::Both);
                    seeds.insert(authenticated.peer, addr);
                }
                Err(e) => last = Some(e),
            }
        }
        if seeds.is_empty() {
            return Err(last.unwrap_or_else(|| {
                Error::InvalidRequest("Client::connect needs at least one address".into())
            }));
        }
        let remote =
            Arc::new(RemoteStores::new(key, cluster, proto::CLIENT_ID, seeds.clone(), link));
        // The other stores, as the nodes know them; an address this client dialed wins
        // (a node may listen on 0.0.0.0).
        let mut all = BTreeMap::new();
        for &store in seeds.keys() {
            if let Some(Ok(Response::Members(members))) =
                remote.call(store, &Request::Members, CALL_TIMEOUT)
            {
                for (id, addr) in members {
                    if let Ok(addr) = addr.parse::<SocketAddr>() {
                        all.entry(id).or_insert(addr);
                    }
                }
            }
        }
        all.extend(seeds);
        *remote.addrs.write() = all;
        Ok(Client { remote })
    }

    /// A client handle for reads and writes; clones share one region cache.
    pub fn db(&self) -> Db {
        Db::new(Router::new(self.remote.clone()))
    }

    /// The stores this client knows, and where they listen.
    pub fn stores(&self) -> BTreeMap<StoreId, SocketAddr> {
        self.remote.addrs()
    }

    /// Asks the nodes in turn (until one answers) to run `req`, which they drive.
    fn ask_any(&self, req: &Request) -> Result<Response> {
        self.ask_any_for(req, ADMIN_TIMEOUT)
    }

    /// [`Client::ask_any`], waiting up to `timeout` for the node that runs it.
    fn ask_any_for(&self, req: &Request, timeout: Duration) -> Result<Response> {
        let mut last = Error::Unavailable { waited: Duration::ZERO, last: "no node".into() };
        for store in self.remote.store_ids() {
            match self.remote.call(store, req, timeout) {
                Some(Ok(r)) => return Ok(r),
                Some(Err(e)) if e.code == ErrorCode::Cancelled => last = e.into_facade(),
                Some(Err(e)) => return Err(e.into_facade()),
                None => {
                    return Err(Error::Unavailable {
                        waited: timeout,
                        last: format!("store {store} did not answer; the outcome is unknown"),
                    });
                }
            }
        }
        Err(last)
    }

    /// Splits the region holding `key` at `key` (a node drives it). Returns the two
    /// regions, left first; see [`Cluster::split`](crate::Cluster::split).
    pub fn split(&self, key: impl AsRef<[u8]>) -> Result<Vec<Region>> {
        match self.ask_any(&Request::Split { key: key.as_ref().to_vec() })? {
            Response::Split(parts) => Ok(parts),
            other => Err(Error::Protocol(format!("a split answered {other:?}"))),
        }
    }

    /// Merges region `right` into its left neighbour `left` (a node drives it); see
    /// [`Cluster::merge`](crate::Cluster::merge).
    pub fn merge(&self, left: impl Into<RegionId>, right: impl Into<RegionId>) -> Result<Region> {
        let (left, right) = (left.into(), right.into());
        match self.ask_any(&Request::Merge { left, right })? {
            Response::Merged(region) => Ok(region),
            other => Err(Error::Protocol(format!("a merge answered {other:?}"))),
        }
    }

    /// Adds store `store`, listening at `addr`, to every region (a node drives it; see
    /// [`Node::add_store`](crate::Node::add_store)). Start the store's node with
    /// `--join` first. Returns the regions as they are afterwards.
    pub fn add_store(&self, store: StoreId, addr: SocketAddr) -> Result<Vec<Region>> {
        let req = Request::StoreAdd { store, addr: addr.to_string() };
        let changed = match self.ask_any_for(&req, STORE_CHANGE_TIMEOUT)? {
            Response::StoreChanged(regions) => regions,
            other => return Err(Error::Protocol(format!("a store add answered {other:?}"))),
        };
        self.remote.set_addr(store, addr);
        Ok(changed)
    }

    /// Removes store `store` from every region (a node drives it; see
    /// [`Node::remove_store`](crate::Node::remove_store)): the first step of
    /// replacing a store whose disk was lost. Returns the regions as they are
    /// afterwards.
    pub fn remove_store(&self, store: StoreId) -> Result<Vec<Region>> {
        match self.ask_any_for(&Request::StoreRemove { store }, STORE_CHANGE_TIMEOUT)? {
            Response::StoreChanged(regions) => Ok(regions),
            other => Err(Error::Protocol(format!("a store remove answered {other:?}"))),
        }
    }

    /// The user regions in key order, as the nodes' replicas see them.
    pub fn regions(&self) -> Result<Vec<RegionInfo>> {
        match self.ask_any(&Request::Regions)? {
            Response::Regions(regions) => Ok(regions),
            other => Err(Error::Protocol(format!("regions answered {other:?}"))),
        }
    }

    /// The active cluster version and what every store of the cluster reports (a node
    /// asks them; see [`Cluster::upgrade_status`](crate::Cluster::upgrade_status)).
    pub fn upgrade_status(&self) -> Result<UpgradeStatus> {
        match self.ask_any(&Request::UpgradeStatus)? {
            Response::UpgradeStatus(status) => Ok(status),
            other => Err(Error::Protocol(format!("upgrade status answered {other:?}"))),
        }
    }

    /// The active cluster version, as the nodes' replicas of the directory hold it.
    pub fn cluster_version(&self) -> Result<u32> {
        self.remote.cluster_version().ok_or_else(|| Error::Unavailable {
            waited: CALL_TIMEOUT,
            last: "no node answered with the directory's cluster version".into(),
        })
    }

    /// Raises the cluster version to `target` (default: the newest the node that
    /// drives it runs); see [`Cluster::finalize_upgrade`](crate::Cluster::finalize_upgrade).
    pub fn finalize_upgrade(&self, target: Option<u32>) -> Result<u32> {
        match self.ask_any(&Request::FinalizeUpgrade { target })? {
            Response::ClusterVersion(Some(active)) => Ok(active),
            other => Err(Error::Protocol(format!("a finalize answered {other:?}"))),
        }
    }

    /// The status of every store that answers (a store that does not is left out).
    pub fn status(&self) -> Vec<StoreStatus> {
        self.remote.store_ids().into_iter().filter_map(|s| self.remote.status(s).ok()).collect()
    }

    /// Up to `limit` pairs with `start <= key < end` from `store`'s own replicas,
    /// without Raft: what that store has applied so far (it may lag). For checking
    /// that every replica holds the data; use [`Db::scan`] to read. Asked page by page
    /// (the store caps each answer), each page at the store's state when it is read.
    pub fn local_scan(
        &self,
        store: StoreId,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        let mut rows = Vec::new();
        let mut from = start.to_vec();
        // Bounded: every page moves `from` forward (checked) or ends the loop.
        while rows.len() < limit {
            let req = Request::LocalScan {
                start: from.clone(),
                end: end.map(<[u8]>::to_vec),
                limit: limit - rows.len(),
            };
            let page = match self.remote.call(store, &req, CALL_TIMEOUT) {
                Some(Ok(Response::Query(QueryResult::Rows(page)))) => page,
                other => return Err(unexpected(store, other)),
            };
            rows.extend(page.rows);
            match page.resume {
                // The store's caps cut the page: ask again from where it stopped.
                Some(resume) if resume.as_ref() > from.as_slice() => from = resume.to_vec(),
                Some(resume) => {
                    return Err(Error::Protocol(format!(
                        "store {store}: a local scan from {from:?} resumed at {resume:?}"
                    )));
                }
                None => break,
            }
        }
        rows.truncate(limit);
        Ok(rows)
    }

    /// Answers this client's reader threads handed to the threads that wait for them
    /// (a caller alone in waiting reads its own answer).
    #[cfg(test)]
    pub(crate) fn answers_handed_over(&self) -> u64 {
        self.remote.handed_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Closes every connection; handles from [`Client::db`] fail with
    /// [`Error::Shutdown`] afterwards.
    pub fn close(&self) {
        self.remote.close();
    }
}
