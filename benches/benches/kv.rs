//! The systems under test: one `Kv` trait, implemented for regionkv's `Db` (through
//! the public API only), fjall 3 and redb 4, so that every workload is one piece of code.

use std::path::Path;

use redb::ReadableDatabase;
use tempfile::TempDir;

/// What a failed call of a system under test returns.
pub type KvError = Box<dyn std::error::Error + Send + Sync>;

/// A key-value store as the workloads see it.
///
/// Contract, the same for every implementation:
/// - `put` and `put_batch` return only once the write is durable: fsynced (fdatasync)
///   before it is acknowledged (in regionkv, by a quorum of replicas, each on its disk);
/// - `get` and `scan` see every write whose `put` returned;
/// - `scan` reads up to `limit` pairs with keys `>= start`, in key order, and touches each
///   key and value once.
pub trait Kv: Send + Sync {
    /// Sets `key` to `value`, durably.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), KvError>;
    /// Sets every pair of `pairs` in one durable batch (how the workloads preload data).
    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) -> Result<(), KvError>;
    /// The length of `key`'s value, or `None` if `key` is absent.
    fn get(&self, key: &[u8]) -> Result<Option<usize>, KvError>;
    /// How many pairs a scan of up to `limit` pairs from `start` on read.
    fn scan(&self, start: &[u8], limit: usize) -> Result<usize, KvError>;
}

/// How many stores a regionkv cluster under test has (each with its own WAL and fsync).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stores(pub usize);

/// The systems every workload runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// An in-process `regionkv::Cluster`: a put is a Raft proposal through the WAL's group
    /// commit; a get or scan is a linearizable (Raft `ReadIndex`) read.
    Regionkv(Stores),
    /// fjall 3: a one-insert batch committed with `PersistMode::SyncData` per put.
    Fjall,
    /// redb 4: one write transaction per put, committed with `Durability::Immediate`.
    Redb,
}

impl System {
    /// Every system, regionkv first, in the order of a report's rows.
    pub const ALL: [System; 4] =
        [System::Regionkv(Stores(1)), System::Regionkv(Stores(3)), System::Fjall, System::Redb];

    /// The system's name in benchmark ids (`put/regionkv-1store/16`).
    pub fn name(self) -> String {
        match self {
            System::Regionkv(Stores(1)) => "regionkv-1store".to_string(),
            System::Regionkv(Stores(n)) => format!("regionkv-{n}stores"),
            System::Fjall => "fjall".to_string(),
            System::Redb => "redb".to_string(),
        }
    }

    /// Opens a fresh, empty instance in a new temporary directory.
    pub fn open(self) -> Result<Opened, KvError> {
        let dir = tempfile::tempdir()?;
        let kv: Box<dyn Kv> = match self {
            System::Regionkv(stores) => Box::new(Regionkv::open(dir.path(), stores)?),
            System::Fjall => Box::new(Fjall::open(dir.path())?),
            System::Redb => Box::new(Redb::open(dir.path())?),
        };
        Ok(Opened { kv, _dir: dir })
    }
}

/// An open system and the directory holding its files.
pub struct Opened {
    // Field order is drop order: the system closes before its directory is removed.
    kv: Box<dyn Kv>,
    _dir: TempDir,
}

impl Opened {
    /// The system, for the workloads.
    pub fn kv(&self) -> &dyn Kv {
        &*self.kv
    }
}

/// regionkv through its public API: a `Cluster` of `Stores` in this process and its `Db`.
struct Regionkv {
    cluster: regionkv::Cluster,
    db: regionkv::Db,
}

impl Regionkv {
    fn open(dir: &Path, stores: Stores) -> Result<Regionkv, KvError> {
        let cluster = regionkv::Cluster::builder().dir(dir).stores(stores.0).build()?;
        let db = cluster.db();
        // A linearizable read needs a leader: the first one waits out the election
        // (the `Db` retries until its deadline), so no measurement includes it.
        db.get(b"leader?")?;
        Ok(Regionkv { cluster, db })
    }
}

impl Drop for Regionkv {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.shutdown() {
            eprintln!("regionkv cluster shutdown failed: {e}");
        }
    }
}

impl Kv for Regionkv {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        Ok(self.db.put(key, value)?)
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) -> Result<(), KvError> {
        let mut batch = regionkv::WriteBatch::new();
        for (key, value) in pairs {
            batch.put(key.to_vec(), value.to_vec());
        }
        Ok(self.db.write(batch)?)
    }

    fn get(&self, key: &[u8]) -> Result<Option<usize>, KvError> {
        Ok(self.db.get(key)?.map(|value| value.len()))
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<usize, KvError> {
        let rows = self.db.scan(start.., limit)?;
        let bytes: usize = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        std::hint::black_box(bytes);
        Ok(rows.len())
    }
}

/// fjall: one keyspace; every write is a batch committed with `PersistMode::SyncData`.
struct Fjall {
    db: fjall::Database,
    keyspace: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Result<Fjall, KvError> {
        let db = fjall::Database::builder(dir.join("fjall")).open()?;
        let keyspace = db.keyspace("bench", fjall::KeyspaceCreateOptions::default)?;
        Ok(Fjall { db, keyspace })
    }

    fn durable_batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(fjall::PersistMode::SyncData))
    }
}

impl Kv for Fjall {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        let mut batch = self.durable_batch();
        batch.insert(&self.keyspace, key, value);
        Ok(batch.commit()?)
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) -> Result<(), KvError> {
        let mut batch = self.durable_batch();
        for (key, value) in pairs {
            batch.insert(&self.keyspace, *key, *value);
        }
        Ok(batch.commit()?)
    }

    fn get(&self, key: &[u8]) -> Result<Option<usize>, KvError> {
        Ok(self.keyspace.get(key)?.map(|value| value.len()))
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<usize, KvError> {
        let (mut rows, mut bytes) = (0, 0);
        for guard in self.keyspace.range(start..).take(limit) {
            let (k, v) = guard.into_inner()?;
            bytes += k.len() + v.len();
            rows += 1;
        }
        std::hint::black_box(bytes);
        Ok(rows)
    }
}

/// redb's one table of the benches: byte-string keys and values.
const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("bench");

/// redb: one file; every write is a transaction committed with `Durability::Immediate`.
struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Result<Redb, KvError> {
        let db = redb::Database::create(dir.join("bench.redb"))?;
        // Create the table, so that reads before the first put find it.
        let txn = db.begin_write()?;
        txn.open_table(REDB_TABLE)?;
        txn.commit()?;
        Ok(Redb { db })
    }

    fn durable_write<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), KvError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        {
            let mut table = txn.open_table(REDB_TABLE)?;
            for (key, value) in pairs {
                table.insert(key, value)?;
            }
        }
        Ok(txn.commit()?)
    }
}

impl Kv for Redb {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.durable_write([(key, value)])
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) -> Result<(), KvError> {
        self.durable_write(pairs.iter().copied())
    }

    fn get(&self, key: &[u8]) -> Result<Option<usize>, KvError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REDB_TABLE)?;
        Ok(table.get(key)?.map(|value| value.value().len()))
    }

    fn scan(&self, start: &[u8], limit: usize) -> Result<usize, KvError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REDB_TABLE)?;
        let (mut rows, mut bytes) = (0, 0);
        for pair in table.range(start..)?.take(limit) {
            let (k, v) = pair?;
            bytes += k.value().len() + v.value().len();
            rows += 1;
        }
        std::hint::black_box(bytes);
        Ok(rows)
    }
}
