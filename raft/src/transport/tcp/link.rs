//! The write side of the connection to one peer store, shared by `send` and the peer's
//! sender thread: a frame is written by the thread that has the envelopes when it can
//! be without waiting, and by the sender thread otherwise (see the module docs,
//! "Threads", and ARCHITECTURE.md "The TCP transport").

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::stats::bump;
use super::{PeerSlot, Shared};
use crate::transport::Envelope;
use crate::transport::frame::{FRAME_HEADER_BYTES, FrameKind, begin_frame, send_nowait};
use crate::transport::seal::Sealer;
use crate::transport::wire::{self, FRAMES};

/// What a peer's queue carries to its sender thread.
#[expect(
    clippy::large_enum_variant,
    reason = "the queue carried whole envelopes before the notice came; a box per envelope would cost an allocation per message"
)]
pub(super) enum Queued {
    /// An envelope to send.
    Envelope(Envelope),
    /// A frame written inline only in part: its rest waits in the turn
    /// ([`Turn::leftover`]) for the sender thread.
    Leftover,
}

/// Spare capacity of the inline encoding buffer kept between frames; a larger one (a
/// snapshot chunk made it grow) is freed.
const SPARE_BYTES_MAX: usize = 256 << 10;

/// The write side of a peer's connection.
#[derive(Default)]
pub(super) struct PeerLink {
    /// Envelopes queued for the sender thread or in its hands, not yet written or
    /// dropped. While any are, `send` queues behind them, so frames leave in the order
    /// `send` was called; the sender thread lowers it, holding the turn, once it wrote
    /// (or dropped) them.
    pub(super) backlog: AtomicUsize,
    /// Frames received from the peer (on its own connection to this store), counted
    /// before they are delivered.
    pub(super) heard: AtomicU64,
    /// The write turn: whoever writes to the connection holds it, so frames never
    /// interleave. The sender thread waits for it; `send` only tries it.
    pub(super) turn: Mutex<Turn>,
}

/// The connection as its writers share it.
#[derive(Default)]
pub(super) struct Turn {
    /// A handle of the authenticated connection, while the sender thread pumps it.
    pub(super) stream: Option<TcpStream>,
    /// When a frame last went out on it (the peer was alive then).
    pub(super) last_write: Option<Instant>,
    /// [`PeerLink::heard`] when a frame last went out: while it is unchanged, the
    /// peer has not answered, and the next frame queues for the sender thread (see
    /// [`Shared::send_inline`]).
    pub(super) heard_at_write: Option<u64>,
    /// The rest of a frame the socket took only in part: the sender thread writes it
    /// before anything else.
    pub(super) leftover: Vec<u8>,
    /// The envelopes of that frame.
    pub(super) leftover_envelopes: u64,
    /// The inline encoding buffer, kept to reuse.
    buf: Vec<u8>,
    /// Seals the frames of a sealed link, while the sender thread pumps it: only
    /// under the turn, so records are numbered in the order they go on the wire.
    pub(super) sealer: Option<Sealer>,
    /// The sealing buffer, kept to reuse.
    sealed: Vec<u8>,
}

impl Turn {
    /// Seals the whole frames in `buf` in place, on a sealed link (else leaves them).
    /// Once sealed, the bytes must go on the wire (whole, or the rest as the
    /// leftover): the peer expects every record number in turn.
    pub(super) fn seal(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let Turn { sealer, sealed, .. } = self;
        match sealer {
            Some(sealer) => {
                let done = sealer.seal_tail(buf, 0, sealed);
                if sealed.capacity() > SPARE_BYTES_MAX {
                    *sealed = Vec::new();
                }
                done
            }
            None => Ok(()),
        }
    }
}

/// How an inline write went.
enum Inline {
    /// The frame went out whole.
    Whole,
    /// The socket took part of it: the rest is in [`Turn::leftover`].
    Part,
    /// Nothing was written: the envelopes go to the queue.
    NotWritten,
}

impl PeerLink {
    /// Counts `n` envelopes that go to the queue (or are dropped: then the caller
    /// lowers the count again).
    fn queue_behind(&self, n: usize) {
        self.backlog.fetch_add(n, Ordering::SeqCst);
    }
}

impl Shared {
    /// Writes `batch` (envelopes for `slot`'s peer, in order) as one frame on this
    /// thread if the connection is up, nothing waits before it, the peer sent a frame
    /// since the last one went out to it, and the socket takes the frame without
    /// waiting (in part: the sender thread writes the rest). Returns what goes to the
    /// queue instead (empty if written), already counted in the link's backlog. Never
    /// waits: the turn is only tried, the write does not block.
    ///
    /// The rule on the peer's answer batches under load: a store that sends again
    /// before its peer answered (many requests at once) hands the frame to the sender
    /// thread, and what queues meanwhile leaves with it in one frame, which costs the
    /// peer one wake-up instead of one per frame; a store that sends once per answer
    /// (one client at a time, a follower answering) writes every frame itself.
    pub(super) fn send_inline(&self, slot: &PeerSlot, batch: Vec<Envelope>) -> Vec<Envelope> {
        let link = &slot.link;
        if link.backlog.load(Ordering::SeqCst) != 0 {
            link.queue_behind(batch.len());
            return batch;
        }
        let Some(mut turn) = link.turn.try_lock() else {
            link.queue_behind(batch.len());
            return batch;
        };
        // Under the turn: the sender thread lowers the backlog only while holding it.
        let heard = link.heard.load(Ordering::SeqCst);
        let outcome = if link.backlog.load(Ordering::SeqCst) == 0
            && turn.leftover.is_empty()
            && turn.heard_at_write != Some(heard)
        {
            self.write_inline(&mut turn, &batch, heard)
        } else {
            Inline::NotWritten
        };
        match outcome {
            Inline::Whole => Vec::new(),
            Inline::Part => {
                drop(turn);
                // Full queue: the sender thread is busy and meets the leftover at its
                // next turn; disconnected: the peer is gone.
                let _ = slot.queue.try_send(Queued::Leftover);
                Vec::new()
            }
            Inline::NotWritten => {
                link.queue_behind(batch.len());
                drop(turn);
                batch
            }
        }
    }

    /// The inline write of [`Shared::send_inline`], holding the turn.
    fn write_inline(&self, turn: &mut Turn, batch: &[Envelope], heard: u64) -> Inline {
        let Some(stream) = &turn.stream else { return Inline::NotWritten };
        let last_write = turn.last_write.unwrap_or_else(Instant::now);
        // After a poll interval of silence, the peer may have closed the connection
        // (restarted, say): the sender thread finds out and reconnects.
        if last_write.elapsed() >= self.config.poll_interval && peer_has_closed(stream) {
            return Inline::NotWritten;
        }
        let bound = self.config.batch_bytes_max.min(self.config.frame_bytes_max as usize);
        let buf = &mut turn.buf;
        buf.clear();
        begin_frame(buf);
        for env in batch {
            // An envelope that does not encode, or a batch over a frame, is the sender
            // thread's to drop or split.
            if wire::encode_envelope(env, buf).is_err() || buf.len() - FRAME_HEADER_BYTES > bound {
                return Inline::NotWritten;
            }
        }
        if FRAMES.finish(buf, FrameKind::Batch).is_err() {
            return Inline::NotWritten;
        }
        let sealed = turn.sealer.is_some();
        let mut frame = std::mem::take(&mut turn.buf);
        if turn.seal(&mut frame).is_err() {
            turn.buf = frame;
            return Inline::NotWritten;
        }
        turn.buf = frame;
        let (Some(stream), buf) = (&turn.stream, &turn.buf) else { return Inline::NotWritten };
        let sent = send_nowait(stream, buf);
        if sent == 0 && !sealed {
            // The socket is full (or failed: the sender thread's write finds out).
            // Sealed, the records are numbered already: they go out as the leftover.
            return Inline::NotWritten;
        }
        let c = &self.counters;
        bump(&c.frames_sent_inline, 1);
        turn.heard_at_write = Some(heard);
        let envelopes = batch.len() as u64;
        let outcome = if sent == buf.len() {
            bump(&c.frames_sent, 1);
            bump(&c.envelopes_sent, envelopes);
            turn.last_write = Some(Instant::now());
            Inline::Whole
        } else {
            let Turn { leftover, leftover_envelopes, buf, .. } = turn;
            leftover.extend_from_slice(&buf[sent..]);
            *leftover_envelopes = envelopes;
            Inline::Part
        };
        if turn.buf.capacity() > SPARE_BYTES_MAX {
            turn.buf = Vec::new();
        }
        outcome
    }
}

/// True if the acceptor closed the connection. It sends nothing after ACCEPT, so a
/// readable socket means end of stream (or a broken protocol): a write would go to a
/// dead connection and its envelopes would be lost. One system call, which does not
/// wait.
pub(super) fn peer_has_closed(stream: &TcpStream) -> bool {
    use rustix::net::{RecvFlags, recv};
    let mut byte = [0u8; 1];
    match recv(stream, &mut byte[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Err(e) => {
            let e = io::Error::from(e);
            e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted
        }
        Ok(_) => true,
    }
}
