//! Frames: the one framing layer under both TCP protocols of regionkv, the store
//! transport ([`super::wire`]) and the facade's client protocol.
//!
//! Everything on a connection is a frame: a fixed header, then a payload.
//!
//! ```text
//!  0         4         5        6              10             14
//!  +---------+---------+--------+--------------+--------------+------------------+
//!  | magic   | version | kind   | payload len  | payload CRC  | payload          |
//!  | 4 bytes | u8      | u8     | u32 LE       | u32 LE       | len bytes        |
//!  +---------+---------+--------+--------------+--------------+------------------+
//! ```
//!
//! A protocol is a [`FrameFormat`]: its name, its magic, its version and the
//! [`FrameKind`]s it uses. The reader checks the magic, the version, the kind and the
//! length (against a bound the reader chooses) before it reads a single payload byte,
//! and the CRC32 of the payload before it hands it on. Every frame kind is a byte with
//! exactly two bits set, so a single flipped bit never turns one valid kind into
//! another.
//!
//! [`FrameReader`] reads frames from a socket whose read timeout is short (a poll
//! interval): it looks at a cancellation token between reads, gives up on a frame whose
//! bytes stall, and on a [`Deadline`] (the handshake's), and buffers a large frame a
//! chunk at a time as its bytes arrive. [`FrameStream`] is a connection's reading side
//! after its handshake: the same reader over a [`READ_BUFFER_BYTES`] buffer, so that one
//! `read` system call takes every frame that arrived together (the reader then parses
//! them from memory). Nothing here panics on bad bytes: every failure is a
//! [`WireError`] or a [`FrameError`].

use std::io::{self, BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use regionkv_engine::codec::DecodeError;
use regionkv_wal::lifecycle::CancellationToken;

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 14;

const OFFSET_VERSION: usize = 4;
const OFFSET_KIND: usize = 5;
const OFFSET_LEN: usize = 6;
const OFFSET_CRC: usize = 10;
const _: () = assert!(OFFSET_CRC + 4 == FRAME_HEADER_BYTES, "the header is 14 bytes");

const KIND_HELLO: u8 = 0b0000_0011;
const KIND_PROOF: u8 = 0b0000_0101;
const KIND_ACCEPT: u8 = 0b0000_0110;
const KIND_REJECT: u8 = 0b0000_1001;
const KIND_BATCH: u8 = 0b0000_1010;
const KIND_REQUEST: u8 = 0b0000_1010;
const KIND_RESPONSE: u8 = 0b0000_1100;

/// What a frame carries. The handshake's four kinds have the same byte in every
/// protocol; the others belong to one protocol each, and two of them may share a byte
/// (a [`FrameFormat`] never holds both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Handshake: who I am, and my nonce.
    Hello,
    /// Handshake: my proof that I know the cluster secret.
    Proof,
    /// Handshake: your proof is good; the protocol's own frames may follow.
    Accept,
    /// Handshake: refused, with a reason; the connection closes.
    Reject,
    /// Store transport: a batch of envelopes.
    Batch,
    /// Client protocol: a request.
    Request,
    /// Client protocol: the answer to one request.
    Response,
}

impl FrameKind {
    /// Every kind.
    pub const ALL: [FrameKind; 7] = [
        FrameKind::Hello,
        FrameKind::Proof,
        FrameKind::Accept,
        FrameKind::Reject,
        FrameKind::Batch,
        FrameKind::Request,
        FrameKind::Response,
    ];

    /// The kind's byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            FrameKind::Hello => KIND_HELLO,
            FrameKind::Proof => KIND_PROOF,
            FrameKind::Accept => KIND_ACCEPT,
            FrameKind::Reject => KIND_REJECT,
            FrameKind::Batch => KIND_BATCH,
            FrameKind::Request => KIND_REQUEST,
            FrameKind::Response => KIND_RESPONSE,
        }
    }
}

// Every kind has exactly two bits set: one flipped bit gives one or three set bits,
// which is no kind, so the header check catches it.
const _: () = {
    let mut i = 0;
    while i < FrameKind::ALL.len() {
        assert!(
            FrameKind::ALL[i].code().count_ones() == 2,
            "frame kinds are two Hamming steps apart"
        );
        i += 1;
    }
};

/// One protocol's frames: what its header must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameFormat {
    /// The protocol's name, for error messages ("the regionkv wire protocol").
    pub protocol: &'static str,
    /// The first four bytes of every frame.
    pub magic: [u8; 4],
    /// The version this binary speaks (and the only one it reads).
    pub version: u8,
    /// The kinds the protocol uses; no two share a byte (see
    /// [`FrameFormat::kinds_are_distinct`], which each protocol asserts at compile time).
    pub kinds: &'static [FrameKind],
}

impl FrameFormat {
    /// True if no two of the format's kinds have the same byte.
    pub const fn kinds_are_distinct(&self) -> bool {
        let mut i = 0;
        while i < self.kinds.len() {
            let mut j = i + 1;
            while j < self.kinds.len() {
                if self.kinds[i].code() == self.kinds[j].code() {
                    return false;
                }
                j += 1;
            }
            i += 1;
        }
        true
    }

    /// The format's kind with this byte, if any.
    pub fn kind(&self, code: u8) -> Option<FrameKind> {
        self.kinds.iter().copied().find(|k| k.code() == code)
    }

    /// Checks a header's magic, version, kind and length (at most `payload_bytes_max`)
    /// before any payload byte is read.
    pub fn parse_header(
        &self,
        header: &[u8; FRAME_HEADER_BYTES],
        payload_bytes_max: u32,
    ) -> Result<FrameHeader, WireError> {
        let [m0, m1, m2, m3, version, kind, l0, l1, l2, l3, c0, c1, c2, c3] = *header;
        if [m0, m1, m2, m3] != self.magic {
            return Err(WireError::BadMagic { found: [m0, m1, m2, m3], protocol: self.protocol });
        }
        if version != self.version {
            return Err(WireError::UnsupportedVersion {
                found: version,
                speaks: self.version,
                protocol: self.protocol,
            });
        }
        let kind = self.kind(kind).ok_or(WireError::UnknownKind { found: kind })?;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        if len > payload_bytes_max {
            return Err(WireError::FrameTooLarge { len, max: payload_bytes_max });
        }
        Ok(FrameHeader { kind, len, crc: u32::from_le_bytes([c0, c1, c2, c3]) })
    }

    /// Fills the header of the frame begun (with [`begin_frame`]) at the start of `out`,
    /// whose payload is everything after the header. Fails if the payload does not fit
    /// a u32 length, or `kind` is not one of the format's.
    pub fn finish(&self, out: &mut [u8], kind: FrameKind) -> Result<(), WireError> {
        if !self.kinds.contains(&kind) {
            return Err(WireError::Encode(format!("a {kind:?} frame in the {}", self.protocol)));
        }
        let Some(payload) = out.get(FRAME_HEADER_BYTES..) else {
            return Err(WireError::Encode("a frame without its header".into()));
        };
        let len = u32::try_from(payload.len())
            .map_err(|_| WireError::Encode(format!("a payload of {} bytes", payload.len())))?;
        let crc = crc32fast::hash(payload);
        out[..OFFSET_VERSION].copy_from_slice(&self.magic);
        out[OFFSET_VERSION] = self.version;
        out[OFFSET_KIND] = kind.code();
        out[OFFSET_LEN..OFFSET_CRC].copy_from_slice(&len.to_le_bytes());
        out[OFFSET_CRC..FRAME_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// A whole frame: header and `payload`.
    pub fn encode(&self, kind: FrameKind, payload: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
        begin_frame(&mut out);
        out.extend_from_slice(payload);
        self.finish(&mut out, kind)?;
        Ok(out)
    }

    /// Splits and checks one whole frame held in `buf` (exactly one frame, nothing
    /// after it). Never panics.
    pub fn decode<'a>(
        &self,
        buf: &'a [u8],
        payload_bytes_max: u32,
    ) -> Result<(FrameKind, &'a [u8]), WireError> {
        let Some((header, payload)) = buf.split_first_chunk::<FRAME_HEADER_BYTES>() else {
            return Err(WireError::Length { expected: FRAME_HEADER_BYTES, actual: buf.len() });
        };
        let header = self.parse_header(header, payload_bytes_max)?;
        header.check(payload)?;
        Ok((header.kind, payload))
    }
}

/// Starts a frame in `out` (which should be empty): room for the header, which
/// [`FrameFormat::finish`] fills once the payload has been appended.
pub fn begin_frame(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
}

/// A checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload is.
    pub kind: FrameKind,
    /// Payload bytes that follow the header.
    pub len: u32,
    /// CRC32 of the payload.
    pub crc: u32,
}

impl FrameHeader {
    /// Checks `payload` against the header's length and CRC.
    pub fn check(&self, payload: &[u8]) -> Result<(), WireError> {
        if payload.len() != self.len as usize {
            return Err(WireError::Length { expected: self.len as usize, actual: payload.len() });
        }
        let actual = crc32fast::hash(payload);
        if actual != self.crc {
            return Err(WireError::Checksum { expected: self.crc, actual });
        }
        Ok(())
    }
}

/// Why bytes from the network were refused. Nothing that decodes bytes panics: every
/// failure is one of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame does not start with the protocol's magic: not our protocol, or a torn
    /// stream.
    #[error("bad frame magic {found:02x?}: the peer does not speak {protocol}")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
        /// The protocol expected.
        protocol: &'static str,
    },
    /// The frame's version is not one this binary reads.
    #[error(
        "unsupported version {found} of {protocol} (this binary speaks {speaks}); upgrade the \
         older side"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u8,
        /// The version this binary speaks.
        speaks: u8,
        /// The protocol.
        protocol: &'static str,
    },
    /// The frame's kind byte names no kind of the protocol.
    #[error("unknown frame kind {found:#04x}")]
    UnknownKind {
        /// The byte found.
        found: u8,
    },
    /// The frame's payload is longer than the reader's bound; it was not read.
    #[error("frame of {len} bytes exceeds the bound of {max} bytes")]
    FrameTooLarge {
        /// The announced payload length.
        len: u32,
        /// The reader's bound.
        max: u32,
    },
    /// The payload's CRC32 does not match the header's.
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    Checksum {
        /// The CRC in the header.
        expected: u32,
        /// The CRC of the payload as received.
        actual: u32,
    },
    /// Fewer or more bytes than the header announces.
    #[error("frame length mismatch: header says {expected} payload bytes, {actual} present")]
    Length {
        /// Payload bytes the header announces.
        expected: usize,
        /// Payload bytes present.
        actual: usize,
    },
    /// A frame of another kind than the protocol step expects.
    #[error("unexpected {found:?} frame; expected {expected}")]
    UnexpectedKind {
        /// What the step expects.
        expected: &'static str,
        /// What arrived.
        found: FrameKind,
    },
    /// A payload's fields do not decode.
    #[error("malformed {what} at byte {offset}: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// Byte offset in the payload.
        offset: usize,
        /// What check failed.
        reason: &'static str,
    },
    /// An embedded Raft message is not valid protobuf.
    #[error("malformed Raft message: {0}")]
    Protobuf(String),
    /// A message could not be encoded.
    #[error("cannot encode {0}")]
    Encode(String),
    /// A record of a sealed link failed its authentication (`super::seal`): bytes
    /// altered, replayed, reordered or injected on the way. Nothing of it was decoded.
    #[error("{0}; nothing of it was decoded")]
    Unauthenticated(String),
}

impl WireError {
    /// True if the bytes were damaged or are not our protocol at all; false if they are
    /// well-formed but from an incompatible or misbehaving peer, or could not be encoded.
    /// Exhaustive on purpose: a new variant must decide.
    pub fn is_corruption(&self) -> bool {
        match self {
            WireError::BadMagic { .. }
            | WireError::Checksum { .. }
            | WireError::Length { .. }
            | WireError::Malformed { .. }
            | WireError::Protobuf(_)
            | WireError::Unauthenticated(_) => true,
            WireError::UnsupportedVersion { .. }
            | WireError::UnknownKind { .. }
            | WireError::FrameTooLarge { .. }
            | WireError::UnexpectedKind { .. }
            | WireError::Encode(_) => false,
        }
    }

    /// Turns a field decoding failure of message `what` into a [`WireError::Malformed`].
    pub fn malformed(what: &'static str) -> impl Fn(DecodeError) -> WireError {
        move |e| WireError::Malformed { what, offset: e.offset, reason: e.reason }
    }
}

/// Why reading or writing frames on a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer sent nothing for too long.
    #[error("the peer sent nothing for {after:?} during {what}")]
    Timeout {
        /// What we were waiting for.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The reader's cancellation token was cancelled (shutdown).
    #[error("shutting down")]
    Cancelled,
    /// A socket operation failed (the peer went away, the network is down, ...).
    #[error("network I/O failed: {0}")]
    Io(#[from] io::Error),
    /// Bytes from the peer failed the frame's checks, or a frame could not be encoded.
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl FrameError {
    /// True if the connection ended by shutdown or by the peer closing it, not by bad
    /// bytes or a failure: worth a quiet log line at most.
    pub fn is_quiet(&self) -> bool {
        match self {
            FrameError::Closed | FrameError::Cancelled => true,
            FrameError::Timeout { .. } | FrameError::Io(_) | FrameError::Wire(_) => false,
        }
    }
}

/// A read error as a frame error: a sealed link's refused record is a
/// [`WireError::Unauthenticated`], anything else an I/O failure.
fn read_error(e: io::Error) -> FrameError {
    if super::seal::is_unauthenticated(&e) {
        return FrameError::Wire(WireError::Unauthenticated(e.to_string()));
    }
    FrameError::Io(e)
}

/// True for the errors a socket read with a timeout returns when nothing arrived in
/// time (or a signal interrupted it): the caller checks its deadline and reads again.
pub fn is_read_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// How long a read may wait for its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Silence before the first byte is fine (between frames).
    Allowed,
    /// Every byte must come within the stall bound.
    Stalls,
}

/// A point in time by which a read must be done, and what it is for (the whole
/// handshake, say): a read that reaches it fails with
/// `FrameError::Timeout { what, after: budget }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    what: &'static str,
    budget: Duration,
}

impl Deadline {
    /// The deadline `budget` from now, for `what`.
    pub fn after(what: &'static str, budget: Duration) -> Deadline {
        Deadline { at: Instant::now() + budget, what, budget }
    }

    fn expired(&self) -> FrameError {
        FrameError::Timeout { what: self.what, after: self.budget }
    }
}

/// Reads frames of one format from a socket whose read timeout is short (a poll
/// interval), looking at `cancel` between reads.
#[derive(Clone, Copy, Debug)]
pub struct FrameReader<'a> {
    /// The protocol's frames.
    pub format: &'a FrameFormat,
    /// Reads stop with [`FrameError::Cancelled`] once this is cancelled.
    pub cancel: Option<&'a CancellationToken>,
    /// A frame that started must arrive whole without a pause this long.
    pub stall: Duration,
    /// Payload bytes buffered at a time: a frame's buffer grows as its bytes arrive,
    /// so a peer announcing a large frame and then stalling costs at most this.
    pub chunk_bytes: usize,
}

impl FrameReader<'_> {
    /// Fills `buf` from `stream`. Waits for the first byte as `idle` allows, for every
    /// later one at most the stall bound, and for all of them no later than
    /// `deadline`.
    pub fn fill<R: Read + ?Sized>(
        &self,
        stream: &mut R,
        buf: &mut [u8],
        idle: Idle,
        deadline: Option<&Deadline>,
    ) -> Result<(), FrameError> {
        let mut filled = 0;
        let mut last_progress = Instant::now();
        // Bounded: every turn reads a byte or waits one read timeout, and waiting ends
        // at the deadline, the stall bound or cancellation.
        while filled < buf.len() {
            match stream.read(&mut buf[filled..]) {
                Ok(0) => return Err(FrameError::Closed),
                Ok(n) => {
                    filled += n;
                    last_progress = Instant::now();
                }
                Err(e) if is_read_timeout(&e) => {
                    if self.cancel.is_some_and(CancellationToken::is_cancelled) {
                        return Err(FrameError::Cancelled);
                    }
                    let now = Instant::now();
                    if let Some(deadline) = deadline
                        && now >= deadline.at
                    {
                        return Err(deadline.expired());
                    }
                    let stalled = now.duration_since(last_progress) >= self.stall;
                    if stalled && (filled > 0 || idle == Idle::Stalls) {
                        return Err(FrameError::Timeout { what: "a frame", after: self.stall });
                    }
                }
                Err(e) => return Err(read_error(e)),
            }
        }
        Ok(())
    }

    /// Reads one frame header (waiting for it as long as `deadline` allows, or for
    /// ever between frames when there is none) and checks it against the format and
    /// `payload_bytes_max`.
    pub fn header<R: Read + ?Sized>(
        &self,
        stream: &mut R,
        payload_bytes_max: u32,
        deadline: Option<&Deadline>,
    ) -> Result<FrameHeader, FrameError> {
        let mut header = [0; FRAME_HEADER_BYTES];
        self.fill(stream, &mut header, Idle::Allowed, deadline)?;
        Ok(self.format.parse_header(&header, payload_bytes_max)?)
    }

    /// Reads the payload `header` announces and checks its length and CRC.
    pub fn payload<R: Read + ?Sized>(
        &self,
        stream: &mut R,
        header: &FrameHeader,
        deadline: Option<&Deadline>,
    ) -> Result<Vec<u8>, FrameError> {
        let len = header.len as usize;
        let chunk = self.chunk_bytes.max(1);
        let mut payload = Vec::with_capacity(len.min(chunk));
        // Bounded: each turn adds up to one chunk, until `len` (at most the bound).
        while payload.len() < len {
            let at = payload.len();
            payload.resize(at + (len - at).min(chunk), 0);
            self.fill(stream, &mut payload[at..], Idle::Stalls, deadline)?;
        }
        header.check(&payload)?;
        Ok(payload)
    }

    /// One whole frame: the header is checked (including `payload_bytes_max`) before
    /// the payload is read, and the payload's CRC before it is returned.
    pub fn frame<R: Read + ?Sized>(
        &self,
        stream: &mut R,
        payload_bytes_max: u32,
        deadline: Option<&Deadline>,
    ) -> Result<(FrameKind, Vec<u8>), FrameError> {
        let header = self.header(stream, payload_bytes_max, deadline)?;
        Ok((header.kind, self.payload(stream, &header, deadline)?))
    }
}

/// Bytes a [`FrameStream`] asks the socket for at a time: every frame that arrived
/// together, up to this, is taken by one `read`.
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// The reading side of a connection after its handshake: frames of one format read
/// through a buffer of [`READ_BUFFER_BYTES`], so that frames that arrived together cost
/// one `read` system call, not two each (header, then payload). Every check of
/// [`FrameReader::frame`] applies unchanged (it is the same reader over the buffer);
/// a payload larger than the buffer is read straight into its own memory, a chunk at
/// a time.
///
/// Only for the part of a connection that is all frames: what the buffer read ahead
/// belongs to this stream, so the handshake (which hands the socket on) reads without it.
#[derive(Debug)]
pub struct FrameStream<'a, R> {
    reader: FrameReader<'a>,
    stream: BufReader<R>,
}

impl<'a, R: Read> FrameStream<'a, R> {
    /// Frames from `stream`, read and checked by `reader`.
    pub fn new(reader: FrameReader<'a>, stream: R) -> FrameStream<'a, R> {
        FrameStream::with_buffer(reader, stream, READ_BUFFER_BYTES)
    }

    fn with_buffer(reader: FrameReader<'a>, stream: R, bytes: usize) -> FrameStream<'a, R> {
        FrameStream { reader, stream: BufReader::with_capacity(bytes, stream) }
    }

    /// The next whole frame, checked as [`FrameReader::frame`] checks it (its payload
    /// at most `payload_bytes_max`); waits between frames until cancelled.
    pub fn frame(&mut self, payload_bytes_max: u32) -> Result<(FrameKind, Vec<u8>), FrameError> {
        self.reader.frame(&mut self.stream, payload_bytes_max, None)
    }

    /// The next whole frame if its first byte arrives by `until` (`Ok(None)`: none
    /// did, and nothing of the stream was consumed, so the next reader starts at a
    /// frame's start). Once a frame started, it is read whole as [`FrameStream::frame`]
    /// reads it, whatever `until` says.
    pub fn frame_by(
        &mut self,
        payload_bytes_max: u32,
        until: Instant,
    ) -> Result<Option<(FrameKind, Vec<u8>)>, FrameError> {
        // Bounded: every turn finds bytes, or waits one read timeout, until `until`.
        loop {
            match self.stream.fill_buf() {
                Ok([]) => return Err(FrameError::Closed),
                Ok(_) => return self.frame(payload_bytes_max).map(Some),
                Err(e) if is_read_timeout(&e) => {
                    if self.reader.cancel.is_some_and(CancellationToken::is_cancelled) {
                        return Err(FrameError::Cancelled);
                    }
                    if Instant::now() >= until {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(read_error(e)),
            }
        }
    }

    /// The reader's cancellation token, if any.
    pub fn cancel(&self) -> Option<&'a CancellationToken> {
        self.reader.cancel
    }

    /// The socket.
    pub fn get_ref(&self) -> &R {
        self.stream.get_ref()
    }
}

/// Writes `buf` to `stream` without waiting (`MSG_DONTWAIT`, no `SIGPIPE`) and returns
/// the bytes the socket took: fewer than all when it is full or failed (a write that
/// waits then finds the error). For a thread that has a frame to send and must not
/// block on the socket (the store's senders, the node's answers).
pub fn send_nowait(stream: &std::net::TcpStream, buf: &[u8]) -> usize {
    use rustix::net::{SendFlags, send};
    let mut sent = 0;
    // Bounded: every turn sends bytes, or leaves.
    while sent < buf.len() {
        match send(stream, &buf[sent..], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e == rustix::io::Errno::INTR => {}
            Err(_) => break,
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: FrameFormat = FrameFormat {
        protocol: "the test protocol",
        magic: *b"TEST",
        version: 3,
        kinds: &[FrameKind::Hello, FrameKind::Request, FrameKind::Response],
    };
    const _: () = assert!(TEST.kinds_are_distinct());

    /// A socket that has `bytes`, then nothing: every later read times out (after a
    /// short sleep, as a socket with a read timeout would).
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.bytes.len() {
                std::thread::sleep(Duration::from_millis(2));
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.bytes.len() - self.at).min(3);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn reader(stall: Duration) -> FrameReader<'static> {
        FrameReader { format: &TEST, cancel: None, stall, chunk_bytes: 4 }
    }

    #[test]
    fn formats_disagree_on_kinds_they_do_not_share() {
        let both = FrameFormat { kinds: &[FrameKind::Batch, FrameKind::Request], ..TEST };
        assert!(!both.kinds_are_distinct(), "batch and request share a byte");
        assert_eq!(TEST.kind(FrameKind::Request.code()), Some(FrameKind::Request));
        assert_eq!(TEST.kind(FrameKind::Proof.code()), None);
        assert!(matches!(TEST.encode(FrameKind::Batch, b""), Err(WireError::Encode(_))));
    }

    #[test]
    fn frames_round_trip_and_headers_are_checked() {
        let frame = TEST.encode(FrameKind::Request, b"payload").unwrap();
        assert_eq!(TEST.decode(&frame, 7).unwrap(), (FrameKind::Request, &b"payload"[..]));
        assert_eq!(TEST.decode(&frame, 6), Err(WireError::FrameTooLarge { len: 7, max: 6 }));
        let other = FrameFormat { magic: *b"OTHR", ..TEST };
        assert!(matches!(other.decode(&frame, 7), Err(WireError::BadMagic { .. })));
        let newer = FrameFormat { version: 4, ..TEST };
        assert!(matches!(
            newer.decode(&frame, 7),
            Err(WireError::UnsupportedVersion { found: 3, speaks: 4, .. })
        ));
        let mut flipped = frame.clone();
        flipped[FRAME_HEADER_BYTES] ^= 1;
        assert!(matches!(TEST.decode(&flipped, 7), Err(WireError::Checksum { .. })));
    }

    #[test]
    fn the_reader_reads_a_frame_in_chunks() {
        let mut frame = TEST.encode(FrameKind::Response, &[9; 11]).unwrap();
        frame.extend(TEST.encode(FrameKind::Hello, b"").unwrap());
        let mut socket = Trickle { bytes: frame, at: 0 };
        let r = reader(Duration::from_secs(5));
        assert_eq!(r.frame(&mut socket, 11, None).unwrap(), (FrameKind::Response, vec![9; 11]));
        assert_eq!(r.frame(&mut socket, 11, None).unwrap(), (FrameKind::Hello, vec![]));
    }

    /// A socket on which `bytes` arrived at once: a read takes as much as it asks for;
    /// it counts the reads.
    struct Burst {
        bytes: Vec<u8>,
        at: usize,
        reads: usize,
    }

    impl Read for Burst {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            let n = buf.len().min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn frames_that_arrived_together_cost_one_read() {
        //! Regression (issue 13, cause 3): both TCP protocols read a frame's header
        //! and then its payload with a `read` each, so 2 system calls per frame however
        //! many frames the socket held. A `FrameStream` takes them all with one read.
        let frames: Vec<Vec<u8>> =
            (0..50u8).map(|i| TEST.encode(FrameKind::Request, &[i; 20]).unwrap()).collect();
        let mut socket = Burst { bytes: frames.concat(), at: 0, reads: 0 };
        let r = reader(Duration::from_secs(5));
        {
            let mut stream =
                FrameStream::new(FrameReader { chunk_bytes: 1 << 20, ..r }, &mut socket);
            for i in 0..50u8 {
                assert_eq!(stream.frame(64).unwrap(), (FrameKind::Request, vec![i; 20]));
            }
            assert!(matches!(stream.frame(64), Err(FrameError::Closed)));
        }
        // One read for the 50 frames, one that finds the end of the stream.
        assert_eq!(socket.reads, 2);
    }

    #[test]
    fn a_frame_stream_checks_what_the_reader_checks() {
        // A frame larger than the buffer arrives whole; a bad frame after good ones
        // in the same read is refused with the reader's error, never a panic.
        let big = TEST.encode(FrameKind::Response, &[5; 100]).unwrap();
        let good = TEST.encode(FrameKind::Request, b"ok").unwrap();
        let mut bad = TEST.encode(FrameKind::Request, b"no").unwrap();
        bad[FRAME_HEADER_BYTES] ^= 1;
        let oversized = TEST.encode(FrameKind::Request, &[0; 65]).unwrap();
        let bytes = [big, good.clone(), bad, good, oversized].concat();
        let mut socket = Burst { bytes, at: 0, reads: 0 };
        let mut stream = FrameStream::with_buffer(reader(Duration::from_secs(5)), &mut socket, 32);
        assert_eq!(stream.frame(100).unwrap(), (FrameKind::Response, vec![5; 100]));
        assert_eq!(stream.frame(64).unwrap(), (FrameKind::Request, b"ok".to_vec()));
        assert!(matches!(stream.frame(64), Err(FrameError::Wire(WireError::Checksum { .. }))));
        assert_eq!(stream.frame(64).unwrap(), (FrameKind::Request, b"ok".to_vec()));
        assert!(matches!(
            stream.frame(64),
            Err(FrameError::Wire(WireError::FrameTooLarge { len: 65, max: 64 }))
        ));
    }

    #[test]
    fn an_expired_deadline_is_reported_as_the_deadline_not_the_stall_bound() {
        // Regression: the client protocol's reader reported a handshake deadline that
        // expired as a timeout of its stall bound (30 s), not of the deadline (5 s).
        let mut silent = Trickle { bytes: Vec::new(), at: 0 };
        let budget = Duration::from_millis(20);
        let deadline = Deadline::after("the handshake", budget);
        let err = reader(Duration::from_secs(30)).frame(&mut silent, 64, Some(&deadline));
        assert!(
            matches!(err, Err(FrameError::Timeout { what: "the handshake", after }) if after == budget),
            "{err:?}"
        );
    }

    #[test]
    fn silence_between_frames_is_fine_but_not_inside_one() {
        let stall = Duration::from_millis(20);
        let frame = TEST.encode(FrameKind::Request, &[1; 8]).unwrap();
        // Half a frame, then silence: a stalled frame.
        let mut half = Trickle { bytes: frame[..FRAME_HEADER_BYTES + 2].to_vec(), at: 0 };
        let err = reader(stall).frame(&mut half, 64, None).unwrap_err();
        assert!(matches!(err, FrameError::Timeout { what: "a frame", .. }), "{err}");
        // Silence before a header is fine until cancelled.
        let cancel = CancellationToken::new();
        let waiting = FrameReader { cancel: Some(&cancel), ..reader(stall) };
        let mut silent = Trickle { bytes: Vec::new(), at: 0 };
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(stall * 5);
                cancel.cancel();
            });
            let err = waiting.frame(&mut silent, 64, None).unwrap_err();
            assert!(matches!(err, FrameError::Cancelled), "{err}");
        });
    }
}
