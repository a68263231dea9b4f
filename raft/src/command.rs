//! What Raft entries carry: client writes and membership changes, versioned.
//!
//! A normal entry's data is empty (the leader's no-op at the start of a term) or:
//!
//! ```text
//!  0        1
//!  +--------+--------------------------------------------------------------+
//!  | format | TLV record (regionkv_engine::codec)                          |
//!  | u8 = 1 |   tag 1 WRITE (nested, repeated): one client write           |
//!  |        |     1 epoch (nested: 1 version, 2 conf_ver)                  |
//!  |        |     2 op (nested, repeated): 1 kind (1 put, 2 delete),       |
//!  |        |       2 key, 3 value (puts only)                             |
//!  |        |     3 session (nested, optional): 1 id, 2 seq                |
//!  |        |     4 time (optional): ms since the Unix epoch, stamped by   |
//!  |        |       the leader that took the write (with a session only)   |
//!  +--------+--------------------------------------------------------------+
//! ```
//!
//! Many client writes share one entry (batching); each is checked against the region
//! when applied and succeeds or fails on its own, and the ops of one write apply
//! together or not at all. A write with a session is applied at most once: a region
//! skips one whose sequence number it has applied already (`regionkv_engine::sessions`,
//! ARCHITECTURE.md "Exactly once"). Fields 3 and 4 came after the first version: a
//! write without them (from a client or leader before sessions) is applied as it
//! comes, and encodes exactly as it did.
//!
//! Or a normal entry carries one admin command (never together with writes):
//!
//! ```text
//!  | format u8 = 1 | TLV: tag 2 ADMIN (nested)                                        |
//!  |   1 epoch (nested) the region's epoch the command was proposed at               |
//!  |   2 kind: 1 split, 2 prepare merge, 3 commit merge, 4 rollback merge,           |
//!  |     5 compute hash (the kind alone; cluster version 2 on, version::IMAGE_HASH)  |
//!  |   3 split key (repeated)       4 new region id (repeated, one per split key)    |
//!  |   5 region (nested, engine codec): the merge target (prepare) or source (commit)|
//!  |   6 prepare index              7 prepare term   (commit and rollback)           |
//! ```
//!
//! Or, in the cluster directory's log only, one directory command: tag 3 (nested),
//! laid out in [`crate::directory`].
//!
//! Or one transaction command (never together with writes; cluster version 3 on,
//! [`crate::version::TXN`]; what each kind does: [`crate::txn`]):
//!
//! ```text
//!  | format u8 = 1 | TLV: tag 5 TXN (nested)                                          |
//!  |   1 epoch (nested)   2 now ms: the proposing leader's clock (apply reads no other)|
//!  |   3 kind: 1 prewrite, 2 commit, 3 resolve, 4 check status, 5 heartbeat,          |
//!  |     6 forget (0 reserved: damage; above 6: a kind this binary does not know)    |
//!  |   then the kind's fields, no others:                                            |
//!  |   4 txn id   5 primary key   6 op (nested, repeated, as in WRITE)   7 ttl ms      |
//!  |   8 record (nested, prewrite on the primary's region only):                     |
//!  |     1 participant key (repeated), 2 coordinator store (optional)                |
//!  |   9 key (repeated, resolve)   10 commit (flag)   11 abort if expired (flag)     |
//!  |   12 forgotten record (nested, repeated): 1 primary key, 2 txn id               |
//!  |   13 new floor                                                                  |
//!  |   28 session (nested, optional; prewrite, cluster version 4): 1 id, 2 seq       |
//!  |   prewrite 4 5 6 7 [8] · commit 4 5 · resolve 4 9 10 · check status 4 5 11 ·    |
//!  |   heartbeat 4 5 7 · forget 12 13                                                |
//! ```
//!
//! Or several transaction commands in one entry (cluster version 5 on,
//! [`crate::version::TXN_V3`]): the commands a region's leader took in one turn.
//!
//! ```text
//!  | format u8 = 1 | TLV: tag 6 TXNS (nested): tag 5 TXN (nested, repeated, as above) |
//! ```
//!
//! Each is applied in order, into the same write-batch round, and succeeds, is
//! refused or is answered on its own, exactly as if it had had its own entry; the
//! entry never holds anything else and never more than the WAL's largest record. A
//! leader proposes a turn's lone command as a plain TXN entry (tag 5), byte for byte
//! as before the batch, and every command alone below version 5.
//!
//! Or one duplication command (never together with writes; cluster version 6 on,
//! [`crate::version::DUP`]): tag 4 DUP (nested), laid out and applied in
//! [`crate::dup`].
//!
//! Or one sink command (duplication, follower side; alone in its entry; cluster
//! version 7 on, [`crate::version::DUP_V2`]): tag 7 SINK (nested), laid out and
//! applied in [`crate::sink`].
//!
//! A membership change is an `EntryConfChangeV2` entry: raft-rs's `ConfChangeV2` in
//! the data, and in the context the epoch it was proposed at and the stores of the
//! peers it adds:
//!
//! ```text
//!  | format u8 = 1 | TLV: 1 epoch (nested), 2 peer (nested, repeated: 1 peer id, 2 store id) |
//! ```

use bytes::Bytes;
use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, SessionId, StoreId};

use crate::directory::DirCmd;
pub(crate) use crate::txn::codec::TxnEntry;

/// The format this binary writes and the newest it reads.
pub(crate) const FORMAT_VERSION: u8 = 1;

const WRITE: u16 = 1;
const W_EPOCH: u16 = 1;
const W_OP: u16 = 2;
const OP_KIND: u16 = 1;
const OP_KEY: u16 = 2;
const OP_VALUE: u16 = 3;
const W_SESSION: u16 = 3;
const W_TIME: u16 = 4;
const SESSION_ID: u16 = 1;
const SESSION_SEQ: u16 = 2;
const EPOCH_VERSION: u16 = 1;
const EPOCH_CONF_VER: u16 = 2;
const CC_EPOCH: u16 = 1;
const CC_PEER: u16 = 2;
const PEER_ID: u16 = 1;
const PEER_STORE: u16 = 2;
const ADMIN: u16 = 2;
const DIRECTORY: u16 = 3;
const DUP: u16 = 4;
const TXN: u16 = 5;
const SINK: u16 = 7;
const TXNS: u16 = 6;
const A_EPOCH: u16 = 1;
const A_KIND: u16 = 2;
const A_SPLIT_KEY: u16 = 3;
const A_NEW_REGION: u16 = 4;
const A_REGION: u16 = 5;
const A_PREPARE_INDEX: u16 = 6;
const A_PREPARE_TERM: u16 = 7;
const ADMIN_TAGS: &[u16] =
    &[A_EPOCH, A_KIND, A_SPLIT_KEY, A_NEW_REGION, A_REGION, A_PREPARE_INDEX, A_PREPARE_TERM];
const KIND_SPLIT: u64 = 1;
const KIND_PREPARE_MERGE: u64 = 2;
const KIND_COMMIT_MERGE: u64 = 3;
const KIND_ROLLBACK_MERGE: u64 = 4;
const KIND_COMPUTE_HASH: u64 = 5;

// The reasons of the decode errors for a kind this binary does not know (see
// `is_unknown_kind`): a top-level tag, an admin kind, an op kind.
const UNKNOWN_COMMAND: &str = "unknown command";
const UNKNOWN_ADMIN: &str = "unknown admin command";
const UNKNOWN_OP: &str = "unknown op kind";

/// One change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
}

impl Op {
    /// The key the op changes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Op::Put { key, value } => 3 * codec::FIELD_HEADER_LEN + 8 + key.len() + value.len(),
            Op::Delete { key } => 2 * codec::FIELD_HEADER_LEN + 8 + key.len(),
        }
    }
}

/// A write's place in its client's session: the session and the write's sequence
/// number in it, the same for every retry of the write. A client has at most one write
/// in flight per session and numbers them 1, 2, 3, ...: a region that applied number
/// `seq` applies no write of the session numbered `seq` or below again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WriteSession {
    /// The session (random, chosen by the client).
    pub id: SessionId,
    /// The write's number in the session.
    pub seq: u64,
}

/// One client write: its ops apply together, if the region is still at `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The region's epoch the client routed the write with.
    pub epoch: Epoch,
    /// The changes, applied in order.
    pub ops: Vec<Op>,
    /// The client session, if the client has one: the write is applied at most once.
    /// `None`: a client from before sessions; applied as it comes.
    pub session: Option<WriteSession>,
    /// When the leader took the write (ms since the Unix epoch, by its clock): the time
    /// the region's session table goes by (never a clock read at apply). Set with a
    /// session only; `None` leaves the table's clock where it is.
    pub time_ms: Option<u64>,
}

impl Write {
    /// Bytes this write adds to an entry.
    pub fn encoded_len(&self) -> usize {
        let session = if self.session.is_some() { 4 * codec::FIELD_HEADER_LEN + 24 } else { 0 };
        4 * codec::FIELD_HEADER_LEN
            + 16
            + session
            + self.ops.iter().map(|op| op.encoded_len() + codec::FIELD_HEADER_LEN).sum::<usize>()
    }
}

pub(crate) fn put_epoch(out: &mut Vec<u8>, epoch: Epoch) {
    codec::put_u64(out, EPOCH_VERSION, epoch.version);
    codec::put_u64(out, EPOCH_CONF_VER, epoch.conf_ver);
}

pub(crate) fn decode_epoch(buf: &[u8]) -> DecodeResult<Epoch> {
    let rec = TlvRecord::parse(buf, &[EPOCH_VERSION, EPOCH_CONF_VER], UnknownTags::Skip)?;
    Ok(Epoch {
        version: rec.required(EPOCH_VERSION, "epoch version")?.as_u64()?,
        conf_ver: rec.required(EPOCH_CONF_VER, "epoch conf_ver")?.as_u64()?,
    })
}

/// Encodes client writes as one entry's data.
/// Bytes [`encode_writes`] adds to its writes' [`Write::encoded_len`]s.
pub(crate) const ENCODED_WRITES_BYTES: usize = 1;

/// The length of [`encode_writes`]'s output.
pub(crate) fn encoded_writes_len<'a>(writes: impl IntoIterator<Item = &'a Write>) -> usize {
    ENCODED_WRITES_BYTES + writes.into_iter().map(Write::encoded_len).sum::<usize>()
}

pub(crate) fn encode_writes<'a>(writes: impl IntoIterator<Item = &'a Write> + Clone) -> Vec<u8> {
    // Sized once: growing field by field cost a reallocation per doubling, on every
    // proposal (with thousands of regions written at random, one per put).
    let mut out = Vec::with_capacity(encoded_writes_len(writes.clone()));
    out.push(FORMAT_VERSION);
    for w in writes {
        codec::put_nested(&mut out, WRITE, |out| {
            codec::put_nested(out, W_EPOCH, |out| put_epoch(out, w.epoch));
            for op in &w.ops {
                codec::put_nested(out, W_OP, |out| put_op(out, op));
            }
            if let Some(session) = w.session {
                codec::put_nested(out, W_SESSION, |out| {
                    codec::put_u64(out, SESSION_ID, session.id.0);
                    codec::put_u64(out, SESSION_SEQ, session.seq);
                });
            }
            if let Some(time_ms) = w.time_ms {
                codec::put_u64(out, W_TIME, time_ms);
            }
        });
    }
    out
}

/// Writes the body of an op field (a write's, or a prewrite's).
pub(crate) fn put_op(out: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Put { key, value } => {
            codec::put_u64(out, OP_KIND, 1);
            codec::put_field(out, OP_KEY, key);
            codec::put_field(out, OP_VALUE, value);
        }
        Op::Delete { key } => {
            codec::put_u64(out, OP_KIND, 2);
            codec::put_field(out, OP_KEY, key);
        }
    }
}

/// Reads the body of an op field (`buf`, a slice of `data`: the key and value are
/// slices of `data`). Offsets in errors are from the start of `buf`.
pub(crate) fn decode_op(data: &Bytes, buf: &[u8]) -> DecodeResult<Op> {
    let o = TlvRecord::parse(buf, &[OP_KIND, OP_KEY, OP_VALUE], UnknownTags::Reject)?;
    let key = data.slice_ref(o.required(OP_KEY, "op key")?.value);
    match o.required(OP_KIND, "op kind").and_then(|f| f.as_u64())? {
        1 => Ok(Op::Put { key, value: data.slice_ref(o.required(OP_VALUE, "put value")?.value) }),
        2 => Ok(Op::Delete { key }),
        _ => Err(DecodeError::new(0, UNKNOWN_OP)),
    }
}

/// A change to a region's shape, replicated through its log like a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCmd {
    /// Cut the region at each key; the region keeps the left part and `new_ids[i]`
    /// takes the part from `split_keys[i]`.
    Split {
        /// Strictly increasing keys strictly inside the region.
        split_keys: Vec<Vec<u8>>,
        /// One fresh region id per split key.
        new_ids: Vec<RegionId>,
    },
    /// Make this region (the source) stop taking writes and wait to be merged into
    /// `target`, its neighbour on the same stores.
    PrepareMerge {
        /// The target as the proposer knows it.
        target: Region,
    },
    /// Merge `source` (prepared at `prepare_index`/`prepare_term` of its own log) into
    /// this region (the target).
    CommitMerge {
        /// The source as it was when its prepare applied.
        source: Region,
        /// Index of the prepare command in the source's log.
        prepare_index: u64,
        /// Its term.
        prepare_term: u64,
    },
    /// Cancel the merge prepared on this region at `prepare_index`.
    RollbackMerge {
        /// Index of the prepare command being cancelled.
        prepare_index: u64,
    },
    /// Every replica hashes its image of the region at this command's index and keeps
    /// `(index, hash)` (`PeerStatus::image_hash`), so that diverged replicas can be
    /// found; it changes nothing. Proposed only once the cluster runs at version 2
    /// ([`crate::version::IMAGE_HASH`]): a binary from before it cannot decode it.
    ComputeHash,
}

/// An admin command and the epoch it was proposed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Admin {
    pub epoch: Epoch,
    pub cmd: AdminCmd,
}

/// What a normal entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Client writes (batched).
    Writes(Vec<Write>),
    /// One admin command.
    Admin(Admin),
    /// One command of the cluster directory (its own region only).
    Directory(DirCmd),
    /// One transaction command.
    Txn(TxnEntry),
    /// Several transaction commands, applied in order, each on its own (cluster
    /// version 5 on).
    Txns(Vec<TxnEntry>),
    /// One duplication command.
    Dup(crate::dup::DupEntryCmd),
    /// One sink command (duplication, follower side; cluster version 7 on).
    Sink(crate::sink::SinkEntryCmd),
}

/// Encodes a sink command as one entry's data.
pub(crate) fn encode_sink(entry: &crate::sink::SinkEntryCmd) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_nested(&mut out, SINK, |out| crate::sink::encode(out, entry));
    out
}

/// Encodes a duplication command as one entry's data.
pub(crate) fn encode_dup(entry: &crate::dup::DupEntryCmd) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_nested(&mut out, DUP, |out| crate::dup::encode(out, entry));
    out
}

/// Encodes a transaction command as one entry's data.
pub(crate) fn encode_txn(entry: &TxnEntry) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_nested(&mut out, TXN, |out| crate::txn::codec::encode(out, entry));
    out
}

/// Bytes [`encode_txns`] adds to the [`encode_txn`] outputs it joins, beyond their
/// own lengths less their format byte each.
pub(crate) const ENCODED_TXNS_BYTES: usize = 1 + codec::FIELD_HEADER_LEN;

/// Joins transaction commands, each as [`encode_txn`] encoded it, into one entry's
/// data: one alone keeps its own entry's shape (a TXN field); two or more go in a
/// TXNS field, in order. Its length is [`ENCODED_TXNS_BYTES`] plus each command's
/// length less one (one command: its own length).
pub(crate) fn encode_txns(encoded: &[&[u8]]) -> Vec<u8> {
    if let [one] = encoded {
        return one.to_vec();
    }
    let len = ENCODED_TXNS_BYTES + encoded.iter().map(|e| e.len().saturating_sub(1)).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(FORMAT_VERSION);
    codec::put_nested(&mut out, TXNS, |out| {
        for e in encoded {
            out.extend_from_slice(e.get(1..).unwrap_or_default());
        }
    });
    out
}

/// Encodes a directory command as one entry's data.
pub(crate) fn encode_directory(cmd: &DirCmd) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_nested(&mut out, DIRECTORY, |out| crate::directory::encode_cmd(out, cmd));
    out
}

/// Encodes an admin command as one entry's data.
pub(crate) fn encode_admin(admin: &Admin) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_nested(&mut out, ADMIN, |out| {
        codec::put_nested(out, A_EPOCH, |out| put_epoch(out, admin.epoch));
        match &admin.cmd {
            AdminCmd::Split { split_keys, new_ids } => {
                codec::put_u64(out, A_KIND, KIND_SPLIT);
                for key in split_keys {
                    codec::put_field(out, A_SPLIT_KEY, key);
                }
                for id in new_ids {
                    codec::put_u64(out, A_NEW_REGION, id.0);
                }
            }
            AdminCmd::PrepareMerge { target } => {
                codec::put_u64(out, A_KIND, KIND_PREPARE_MERGE);
                codec::put_nested(out, A_REGION, |out| codec::put_region(out, target));
            }
            AdminCmd::CommitMerge { source, prepare_index, prepare_term } => {
                codec::put_u64(out, A_KIND, KIND_COMMIT_MERGE);
                codec::put_nested(out, A_REGION, |out| codec::put_region(out, source));
                codec::put_u64(out, A_PREPARE_INDEX, *prepare_index);
                codec::put_u64(out, A_PREPARE_TERM, *prepare_term);
            }
            AdminCmd::RollbackMerge { prepare_index } => {
                codec::put_u64(out, A_KIND, KIND_ROLLBACK_MERGE);
                codec::put_u64(out, A_PREPARE_INDEX, *prepare_index);
            }
            AdminCmd::ComputeHash => codec::put_u64(out, A_KIND, KIND_COMPUTE_HASH),
        }
    });
    out
}

fn decode_admin(buf: &[u8]) -> DecodeResult<Admin> {
    let rec = TlvRecord::parse(buf, ADMIN_TAGS, UnknownTags::Reject)?;
    let epoch_field = rec.required(A_EPOCH, "admin epoch")?;
    let epoch = decode_epoch(epoch_field.value).map_err(|e| e.shifted(epoch_field.offset))?;
    let region = || -> DecodeResult<Region> {
        let f = rec.required(A_REGION, "admin region")?;
        codec::decode_region(f.value, UnknownTags::Reject).map_err(|e| e.shifted(f.offset))
    };
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64());
    let cmd = match rec.required(A_KIND, "admin kind")?.as_u64()? {
        KIND_SPLIT => {
            let split_keys: Vec<Vec<u8>> =
                rec.repeated(A_SPLIT_KEY).map(|f| f.value.to_vec()).collect();
            let new_ids = rec
                .repeated(A_NEW_REGION)
                .map(|f| f.as_u64().map(RegionId))
                .collect::<Result<Vec<_>, _>>()?;
            if split_keys.is_empty() || split_keys.len() != new_ids.len() {
                return Err(DecodeError::new(0, "split needs one new region per split key"));
            }
            AdminCmd::Split { split_keys, new_ids }
        }
        KIND_PREPARE_MERGE => AdminCmd::PrepareMerge { target: region()? },
        KIND_COMMIT_MERGE => AdminCmd::CommitMerge {
            source: region()?,
            prepare_index: u64_of(A_PREPARE_INDEX, "prepare index")?,
            prepare_term: u64_of(A_PREPARE_TERM, "prepare term")?,
        },
        KIND_ROLLBACK_MERGE => {
            AdminCmd::RollbackMerge { prepare_index: u64_of(A_PREPARE_INDEX, "prepare index")? }
        }
        KIND_COMPUTE_HASH => AdminCmd::ComputeHash,
        _ => return Err(DecodeError::new(0, UNKNOWN_ADMIN)),
    };
    Ok(Admin { epoch, cmd })
}

/// True if `data` (a normal entry's) was written in a format newer than this binary
/// reads: it cannot tell what the command does, so it must not refuse it either.
pub(crate) fn is_newer_format(data: &[u8]) -> bool {
    data.first().is_some_and(|&version| version > FORMAT_VERSION)
}

/// True if `error` (from [`decode`]) says the entry is well formed up to a kind this
/// binary does not know (a top-level tag, an admin, directory or op kind of format 1),
/// rather than damaged: it may be a newer binary's command (ARCHITECTURE.md, "Cluster
/// versions", says what apply does with it).
pub(crate) fn is_unknown_kind(error: &DecodeError) -> bool {
    [
        UNKNOWN_COMMAND,
        UNKNOWN_ADMIN,
        UNKNOWN_OP,
        crate::directory::UNKNOWN_DIRECTORY_COMMAND,
        crate::txn::codec::UNKNOWN_TXN,
        crate::dup::UNKNOWN_DUP,
        crate::sink::UNKNOWN_SINK,
    ]
    .contains(&error.reason)
}

impl Command {
    /// The cluster version that introduced this command's kind: a binary configured to
    /// support only older versions (`StoreConfig::cluster_version_max`) treats it as a
    /// kind it does not know.
    pub(crate) fn since(&self) -> u32 {
        match self {
            Command::Directory(DirCmd::SetClusterVersion { .. }) => {
                crate::directory::SET_CLUSTER_VERSION_SINCE
            }
            Command::Directory(DirCmd::RecordHealth { .. }) => crate::version::HEALTH_AUDIT.since,
            Command::Admin(Admin { cmd: AdminCmd::ComputeHash, .. }) => {
                crate::version::IMAGE_HASH.since
            }
            Command::Dup(entry) if matches!(entry.cmd, crate::dup::DupCmd::Fence { .. }) => {
                crate::version::DUP_V3.since
            }
            Command::Dup(_) => crate::version::DUP.since,
            Command::Directory(DirCmd::AlterDup(a))
                if crate::directory::dups::is_cutover_status(a.to)
                    || crate::directory::dups::is_cutover_status(a.from) =>
            {
                crate::version::DUP_V3.since
            }
            Command::Sink(_)
            | Command::Directory(
                DirCmd::AddDup { .. } | DirCmd::AlterDup(_) | DirCmd::DropDup { .. },
            ) => crate::version::DUP_V2.since,
            Command::Txns(entries) => {
                entries.iter().map(txn_since).fold(crate::version::TXN_V3.since, u32::max)
            }
            Command::Txn(entry) => txn_since(entry),
            Command::Directory(DirCmd::SetGcSafepoint { .. }) => crate::version::TXN_V2.since,
            Command::Directory(DirCmd::SaveTsLimit { .. }) => crate::version::TXN.since,
            Command::Writes(_)
            | Command::Admin(_)
            | Command::Directory(DirCmd::AllocIds { .. } | DirCmd::Report { .. }) => {
                crate::version::CLUSTER_VERSION_INITIAL
            }
        }
    }
}

/// The cluster version that introduced a transaction command's kind (and fields).
fn txn_since(entry: &TxnEntry) -> u32 {
    if entry.cmd.needs_v2() { crate::version::TXN_V2.since } else { crate::version::TXN.since }
}

/// True if `data` (a normal entry's) starts with an admin command: a cheap look at
/// the first field's tag, before any decoding.
pub(crate) fn is_admin(data: &[u8]) -> bool {
    data.first() == Some(&FORMAT_VERSION) && data.get(1..3) == Some(&ADMIN.to_le_bytes()[..])
}

/// Decodes an entry's command; keys and values are slices of `data`. Never panics,
/// whatever `data` holds.
pub(crate) fn decode(data: &Bytes) -> DecodeResult<Command> {
    let (&version, body) = data.split_first().ok_or(DecodeError::new(0, "empty command"))?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::new(0, "command of an unknown format version"));
    }
    let fields = codec::fields(body).map_err(|e| e.shifted(1))?;
    if let Some(dir) = fields.iter().find(|f| f.tag == DIRECTORY) {
        if fields.len() != 1 {
            return Err(DecodeError::new(dir.offset + 1, "a directory command shares its entry"));
        }
        return crate::directory::decode_cmd(dir.value)
            .map(Command::Directory)
            .map_err(|e| e.shifted(dir.offset + 1));
    }
    if let Some(txn) = fields.iter().find(|f| f.tag == TXN) {
        if fields.len() != 1 {
            return Err(DecodeError::new(txn.offset + 1, "a transaction command shares its entry"));
        }
        return crate::txn::codec::decode(data, txn.value)
            .map(Command::Txn)
            .map_err(|e| e.shifted(txn.offset + 1));
    }
    if let Some(txns) = fields.iter().find(|f| f.tag == TXNS) {
        if fields.len() != 1 {
            return Err(DecodeError::new(txns.offset + 1, "a transaction batch shares its entry"));
        }
        return decode_txns(data, txns.value).map_err(|e| e.shifted(txns.offset + 1));
    }
    if let Some(dup) = fields.iter().find(|f| f.tag == DUP) {
        if fields.len() != 1 {
            return Err(DecodeError::new(dup.offset + 1, "a duplication command shares its entry"));
        }
        return crate::dup::decode(dup.value)
            .map(Command::Dup)
            .map_err(|e| e.shifted(dup.offset + 1));
    }
    if let Some(sink) = fields.iter().find(|f| f.tag == SINK) {
        if fields.len() != 1 {
            return Err(DecodeError::new(sink.offset + 1, "a sink command shares its entry"));
        }
        return crate::sink::decode(sink.value)
            .map(Command::Sink)
            .map_err(|e| e.shifted(sink.offset + 1));
    }
    if let Some(admin) = fields.iter().find(|f| f.tag == ADMIN) {
        if fields.len() != 1 {
            return Err(DecodeError::new(admin.offset + 1, "an admin command shares its entry"));
        }
        return decode_admin(admin.value)
            .map(Command::Admin)
            .map_err(|e| e.shifted(admin.offset + 1));
    }
    let mut writes = Vec::new();
    for field in fields {
        if field.tag != WRITE {
            return Err(DecodeError::new(field.offset + 1, UNKNOWN_COMMAND));
        }
        let at = |e: DecodeError| e.shifted(field.offset + 1);
        let rec =
            TlvRecord::parse(field.value, &[W_EPOCH, W_OP, W_SESSION, W_TIME], UnknownTags::Reject)
                .map_err(at)?;
        let epoch_field = rec.required(W_EPOCH, "write epoch").map_err(at)?;
        let epoch =
            decode_epoch(epoch_field.value).map_err(|e| at(e.shifted(epoch_field.offset)))?;
        let mut ops = Vec::new();
        for op in rec.repeated(W_OP) {
            ops.push(decode_op(data, op.value).map_err(|e| at(e.shifted(op.offset)))?);
        }
        let session = match rec.optional(W_SESSION).map_err(at)? {
            Some(f) => {
                let s_at = |e: DecodeError| at(e.shifted(f.offset));
                let s = TlvRecord::parse(f.value, &[SESSION_ID, SESSION_SEQ], UnknownTags::Reject)
                    .map_err(s_at)?;
                let u64_of =
                    |tag, what| s.required(tag, what).and_then(|v| v.as_u64()).map_err(s_at);
                Some(WriteSession {
                    id: SessionId(u64_of(SESSION_ID, "session id")?),
                    seq: u64_of(SESSION_SEQ, "session seq")?,
                })
            }
            None => None,
        };
        let time_ms =
            rec.optional(W_TIME).and_then(|f| f.map(|f| f.as_u64()).transpose()).map_err(at)?;
        writes.push(Write { epoch, ops, session, time_ms });
    }
    Ok(Command::Writes(writes))
}

/// Reads the body of a TXNS field (`buf`, a slice of `data`): two or more TXN fields
/// and nothing else.
fn decode_txns(data: &Bytes, buf: &[u8]) -> DecodeResult<Command> {
    let fields = codec::fields(buf)?;
    if fields.len() < 2 {
        return Err(DecodeError::new(0, "a transaction batch of fewer than two commands"));
    }
    let mut entries = Vec::with_capacity(fields.len());
    for field in fields {
        if field.tag != TXN {
            return Err(DecodeError::new(field.offset, "a transaction batch holds another kind"));
        }
        entries.push(
            crate::txn::codec::decode(data, field.value).map_err(|e| e.shifted(field.offset))?,
        );
    }
    Ok(Command::Txns(entries))
}

/// The context of a membership change entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChangePeersContext {
    /// The region's epoch when the change was proposed.
    pub epoch: Epoch,
    /// Stores of the peers the change adds (removed peers need none).
    pub peers: Vec<Peer>,
}

pub(crate) fn encode_change_peers(ctx: &ChangePeersContext) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_nested(&mut out, CC_EPOCH, |out| put_epoch(out, ctx.epoch));
    for p in &ctx.peers {
        codec::put_nested(&mut out, CC_PEER, |out| {
            codec::put_u64(out, PEER_ID, p.id.0);
            codec::put_u64(out, PEER_STORE, p.store.0);
        });
    }
    out
}

pub(crate) fn decode_change_peers(data: &[u8]) -> DecodeResult<ChangePeersContext> {
    let (&version, body) =
        data.split_first().ok_or(DecodeError::new(0, "empty change-peers context"))?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::new(0, "change-peers context of an unknown format version"));
    }
    let rec = TlvRecord::parse(body, &[CC_EPOCH, CC_PEER], UnknownTags::Reject)
        .map_err(|e| e.shifted(1))?;
    let epoch_field = rec.required(CC_EPOCH, "change-peers epoch").map_err(|e| e.shifted(1))?;
    let epoch = decode_epoch(epoch_field.value).map_err(|e| e.shifted(1 + epoch_field.offset))?;
    let mut peers = Vec::new();
    for p in rec.repeated(CC_PEER) {
        let r = TlvRecord::parse(p.value, &[PEER_ID, PEER_STORE], UnknownTags::Reject)
            .map_err(|e| e.shifted(1 + p.offset))?;
        let id = r
            .required(PEER_ID, "peer id")
            .and_then(|f| f.as_u64())
            .map_err(|e| e.shifted(1 + p.offset))?;
        let store = r
            .required(PEER_STORE, "peer store")
            .and_then(|f| f.as_u64())
            .map_err(|e| e.shifted(1 + p.offset))?;
        peers.push(Peer { id: PeerId(id), store: StoreId(store) });
    }
    Ok(ChangePeersContext { epoch, peers })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_write() -> impl Strategy<Value = Write> {
        let op = prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..20),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(k, v)| Op::Put { key: k.into(), value: v.into() }),
            proptest::collection::vec(any::<u8>(), 0..20)
                .prop_map(|k| Op::Delete { key: k.into() }),
        ];
        let session = proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>()));
        (any::<u64>(), any::<u64>(), proptest::collection::vec(op, 0..6), session).prop_map(
            |(version, conf_ver, ops, session)| Write {
                epoch: Epoch { version, conf_ver },
                ops,
                session: session.map(|(id, seq, _)| WriteSession { id: SessionId(id), seq }),
                time_ms: session.map(|(_, _, time)| time),
            },
        )
    }

    fn arb_region() -> impl Strategy<Value = Region> {
        (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..8),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4),
        )
            .prop_map(|(id, start, suffix, version, conf_ver, peers)| Region {
                id: RegionId(id),
                // A valid range: the end, if any, is the start with something after it.
                end: suffix.map(|suffix| [start.as_slice(), &[0], &suffix].concat()),
                start,
                epoch: Epoch { version, conf_ver },
                peers: peers
                    .into_iter()
                    .map(|(p, s)| Peer { id: PeerId(p), store: StoreId(s) })
                    .collect(),
            })
    }

    fn arb_admin() -> impl Strategy<Value = Admin> {
        let cmd = prop_oneof![
            proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..8), any::<u64>()),
                1..5
            )
            .prop_map(|parts| AdminCmd::Split {
                split_keys: parts.iter().map(|(k, _)| k.clone()).collect(),
                new_ids: parts.iter().map(|(_, id)| RegionId(*id)).collect(),
            }),
            arb_region().prop_map(|target| AdminCmd::PrepareMerge { target }),
            (arb_region(), any::<u64>(), any::<u64>()).prop_map(
                |(source, prepare_index, prepare_term)| {
                    AdminCmd::CommitMerge { source, prepare_index, prepare_term }
                }
            ),
            any::<u64>().prop_map(|prepare_index| AdminCmd::RollbackMerge { prepare_index }),
            Just(AdminCmd::ComputeHash),
        ];
        (any::<u64>(), any::<u64>(), cmd)
            .prop_map(|(version, conf_ver, cmd)| Admin { epoch: Epoch { version, conf_ver }, cmd })
    }

    #[test]
    fn compute_hash_is_its_epoch_and_kind_alone() {
        let admin = Admin { epoch: Epoch { version: 3, conf_ver: 4 }, cmd: AdminCmd::ComputeHash };
        let data = encode_admin(&admin);
        let mut expected = vec![FORMAT_VERSION];
        codec::put_nested(&mut expected, ADMIN, |out| {
            codec::put_nested(out, A_EPOCH, |out| put_epoch(out, admin.epoch));
            codec::put_u64(out, A_KIND, 5);
        });
        assert_eq!(data, expected);
        assert!(is_admin(&data));
        assert_eq!(decode(&Bytes::from(data)).unwrap(), Command::Admin(admin));
    }

    proptest! {
        #[test]
        fn admin_round_trips_and_damage_never_panics(admin in arb_admin()) {
            let data = Bytes::from(encode_admin(&admin));
            prop_assert_eq!(decode(&data).unwrap(), Command::Admin(admin.clone()));
            for bit in 0..data.len() * 8 {
                let mut damaged = data.to_vec();
                damaged[bit / 8] ^= 1 << (bit % 8);
                // Entries are checksummed by the log; here only: never a panic.
                let _ = decode(&Bytes::from(damaged));
            }
        }

        #[test]
        fn writes_round_trip(writes in proptest::collection::vec(arb_write(), 0..5)) {
            let data = Bytes::from(encode_writes(&writes));
            prop_assert_eq!(decode(&data).unwrap(), Command::Writes(writes.clone()));
            let estimate: usize = writes.iter().map(Write::encoded_len).sum::<usize>() + 1;
            prop_assert!(data.len() <= estimate, "size estimate {} below actual {}", estimate, data.len());
        }

        #[test]
        fn writes_without_a_session_encode_as_before_sessions(
            writes in proptest::collection::vec(arb_write(), 0..5)
        ) {
            // The format before sessions, by hand: epoch and ops only.
            let bare: Vec<Write> =
                writes.into_iter().map(|w| Write { session: None, time_ms: None, ..w }).collect();
            let mut old = vec![FORMAT_VERSION];
            for w in &bare {
                codec::put_nested(&mut old, WRITE, |out| {
                    codec::put_nested(out, W_EPOCH, |out| put_epoch(out, w.epoch));
                    for op in &w.ops {
                        codec::put_nested(out, W_OP, |out| {
                            codec::put_u64(out, OP_KIND, match op { Op::Put { .. } => 1, Op::Delete { .. } => 2 });
                            codec::put_field(out, OP_KEY, op.key());
                            if let Op::Put { value, .. } = op {
                                codec::put_field(out, OP_VALUE, value);
                            }
                        });
                    }
                });
            }
            prop_assert_eq!(&encode_writes(&bare), &old);
            prop_assert_eq!(decode(&Bytes::from(old)).unwrap(), Command::Writes(bare));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&Bytes::from(bytes.clone()));
            let _ = decode_change_peers(&bytes);
        }

        #[test]
        fn change_peers_round_trips(v in any::<u64>(), c in any::<u64>(), peers in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4)) {
            let ctx = ChangePeersContext {
                epoch: Epoch { version: v, conf_ver: c },
                peers: peers.into_iter().map(|(p, s)| Peer { id: PeerId(p), store: StoreId(s) }).collect(),
            };
            prop_assert_eq!(decode_change_peers(&encode_change_peers(&ctx)).unwrap(), ctx);
        }
    }

    #[test]
    fn a_transaction_batch_holds_two_or_more_txn_commands_and_nothing_else() {
        let txn = |out: &mut Vec<u8>| {
            codec::put_nested(out, TXN, |out| {
                codec::put_nested(out, 1, |out| put_epoch(out, Epoch::INITIAL));
                codec::put_u64(out, 2, 7);
                codec::put_u64(out, 3, 5);
                codec::put_u64(out, 4, 9);
                codec::put_field(out, 5, b"k");
                codec::put_u64(out, 7, 1000);
            });
        };
        let batch = |body: &dyn Fn(&mut Vec<u8>)| {
            let mut out = vec![FORMAT_VERSION];
            codec::put_nested(&mut out, TXNS, body);
            Bytes::from(out)
        };
        let Ok(Command::Txns(two)) = decode(&batch(&|out| (txn(out), txn(out)).1)) else {
            panic!("two heartbeats do not decode as a batch");
        };
        assert_eq!(two.len(), 2);
        // Damage, not an unknown kind: one command, another kind inside, a neighbour.
        let one = batch(&|out| txn(out));
        let mixed = batch(&|out| {
            txn(out);
            codec::put_nested(out, WRITE, |out| {
                codec::put_nested(out, W_EPOCH, |out| put_epoch(out, Epoch::INITIAL));
            });
        });
        let mut shared = batch(&|out| (txn(out), txn(out)).1).to_vec();
        codec::put_nested(&mut shared, ADMIN, |_| {});
        for data in [one, mixed, Bytes::from(shared)] {
            let e = decode(&data).unwrap_err();
            assert!(!is_unknown_kind(&e), "{e:?}");
        }
        // A command of a kind this binary does not know makes the whole entry one.
        let unknown = batch(&|out| {
            txn(out);
            codec::put_nested(out, TXN, |out| {
                codec::put_nested(out, 1, |out| put_epoch(out, Epoch::INITIAL));
                codec::put_u64(out, 2, 7);
                codec::put_u64(out, 3, 99);
            });
        });
        assert!(is_unknown_kind(&decode(&unknown).unwrap_err()));
    }

    #[test]
    fn kinds_this_binary_does_not_know_are_told_apart_from_damage() {
        // A top-level tag, an admin kind and an op kind from a newer binary.
        let mut top = vec![FORMAT_VERSION];
        codec::put_nested(&mut top, 9, |out| codec::put_u64(out, 1, 1));
        let mut admin = vec![FORMAT_VERSION];
        codec::put_nested(&mut admin, ADMIN, |out| {
            codec::put_nested(out, A_EPOCH, |out| put_epoch(out, Epoch::INITIAL));
            codec::put_u64(out, A_KIND, 99);
        });
        let mut op = vec![FORMAT_VERSION];
        codec::put_nested(&mut op, WRITE, |out| {
            codec::put_nested(out, W_EPOCH, |out| put_epoch(out, Epoch::INITIAL));
            codec::put_nested(out, W_OP, |out| {
                codec::put_u64(out, OP_KIND, 7);
                codec::put_field(out, OP_KEY, b"k");
            });
        });
        let mut dir = vec![FORMAT_VERSION];
        codec::put_nested(&mut dir, DIRECTORY, |out| codec::put_u64(out, 1, 42));
        for data in [top, admin, op, dir] {
            let e = decode(&Bytes::from(data)).unwrap_err();
            assert!(is_unknown_kind(&e), "{e:?}");
        }
        // Damage is not an unknown kind.
        for data in [vec![FORMAT_VERSION, 1], vec![FORMAT_VERSION, 1, 0, 200, 0, 0, 0]] {
            let e = decode(&Bytes::from(data)).unwrap_err();
            assert!(!is_unknown_kind(&e), "{e:?}");
        }
    }
}
