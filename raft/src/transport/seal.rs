//! Sealed links: after the handshake ([`super::handshake`]), every byte of both TCP
//! protocols is encrypted and authenticated, with keys of the connection's own.
//!
//! The handshake carries a Noise key exchange (the `snow` crate,
//! [`NOISE_PARAMS`]: an ephemeral X25519 exchange mixed with a pre-shared key derived
//! from the protocol's handshake key, so only holders of the secret finish it): the
//! connector's PROOF carries the first Noise message, the acceptor's ACCEPT the second.
//! Its prologue is both HELLO payloads, so the keys are bound to everything the
//! handshake said (ids, nonces, incarnations, link modes). Each connection gets fresh
//! keys (forward secrecy: a secret learnt later does not open recorded traffic).
//!
//! After ACCEPT, each direction is a sequence of records:
//!
//! ```text
//!  +-------------------+-------------------------------------------+
//!  | ciphertext length | ciphertext: ChaCha20-Poly1305 of up to    |
//!  | u16 LE            | RECORD_PLAIN_MAX bytes of frames, 16-byte |
//!  |                   | tag; nonce = the record's sequence number |
//!  +-------------------+-------------------------------------------+
//! ```
//!
//! The frames inside are unchanged (header, bounds, CRC: [`super::frame`]), so every
//! check of the frame reader applies to the decrypted bytes. A record's nonce is its
//! number in its direction (0, 1, 2, ...), implicit: a record replayed, reordered,
//! dropped, injected or altered fails its tag, and the reader ends the connection with
//! [`super::frame::WireError::Unauthenticated`] before any byte of it reaches a frame.
//! Writers seal a frame under the connection's write turn, so records leave in the
//! order of their numbers.
//!
//! Plaintext links (no records: frames straight on the socket, as before sealing
//! existed) remain for benchmarks, behind an explicit `insecure` setting; the HELLO
//! says which a side runs ([`LinkMode`]), and a side refuses a peer that runs the
//! other.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;

use snow::StatelessTransportState;

use super::handshake::HandshakeKey;

/// The Noise protocol of sealed links: no static keys (the pre-shared key
/// authenticates), ephemeral X25519, ChaCha20-Poly1305, BLAKE2s.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// The largest Noise message (and so record ciphertext).
pub const RECORD_BYTES_MAX: usize = 65_535;
/// Bytes of a record's authentication tag.
pub const TAG_BYTES: usize = 16;
/// The most frame bytes one record carries.
pub const RECORD_PLAIN_MAX: usize = RECORD_BYTES_MAX - TAG_BYTES;
/// Bytes of a record's length prefix.
const RECORD_HEADER_BYTES: usize = 2;
/// Bytes the reader asks the socket for at a time (several records).
const RAW_BUFFER_BYTES: usize = 4 * (RECORD_HEADER_BYTES + RECORD_BYTES_MAX);
/// The context of the pre-shared key's derivation from the handshake key.
const PSK_CONTEXT: &str = "regionkv sealed link v1 noise psk";
/// The prologue's label (then both HELLO payloads, each length-prefixed).
const PROLOGUE_LABEL: &[u8] = b"regionkv sealed link v1";

/// What a side runs on its connections after the handshake; said in its HELLO.
/// Code 0 is reserved (unspecified); a HELLO without the field comes from a binary
/// that predates sealing, which runs plaintext links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkMode {
    /// Encrypted and authenticated records (the default).
    Sealed,
    /// Plaintext frames (the `insecure` setting, for benchmarks).
    Plain,
}

impl LinkMode {
    /// The mode's code in a HELLO.
    pub fn code(self) -> u64 {
        match self {
            LinkMode::Sealed => 1,
            LinkMode::Plain => 2,
        }
    }

    /// The mode of a code; `None` for 0 and codes this binary does not know.
    pub fn from_code(code: u64) -> Option<LinkMode> {
        match code {
            1 => Some(LinkMode::Sealed),
            2 => Some(LinkMode::Plain),
            _ => None,
        }
    }

    /// The mode for an `insecure` setting.
    pub fn from_insecure(insecure: bool) -> LinkMode {
        if insecure { LinkMode::Plain } else { LinkMode::Sealed }
    }
}

impl fmt::Display for LinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkMode::Sealed => "sealed (encrypted) links",
            LinkMode::Plain => "plaintext links (insecure)",
        })
    }
}

/// Why a key exchange or a record failed.
#[derive(Debug, thiserror::Error)]
#[error("sealed link: {0}")]
pub struct SealError(String);

fn noise(e: &snow::Error) -> SealError {
    SealError(e.to_string())
}

/// A record failed its authentication tag: tampered, replayed, reordered or injected
/// bytes (the io error the reader returns carries it).
#[derive(Debug, thiserror::Error)]
#[error(
    "record {sequence} failed its authentication: the bytes were altered, replayed, reordered \
     or injected on the way"
)]
pub struct Unauthenticated {
    /// The record's number in its direction.
    pub sequence: u64,
}

/// True if `e` is a reader's [`Unauthenticated`].
pub fn is_unauthenticated(e: &io::Error) -> bool {
    e.get_ref().is_some_and(<dyn std::error::Error + Send + Sync>::is::<Unauthenticated>)
}

/// The prologue both sides give Noise: the label and both HELLO payloads.
fn prologue(connector_hello: &[u8], acceptor_hello: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PROLOGUE_LABEL.len() + 8 + connector_hello.len() * 2);
    out.extend_from_slice(PROLOGUE_LABEL);
    for hello in [connector_hello, acceptor_hello] {
        out.extend_from_slice(&(hello.len() as u32).to_le_bytes());
        out.extend_from_slice(hello);
    }
    out
}

fn builder_parts(key: &HandshakeKey) -> Result<(snow::params::NoiseParams, [u8; 32]), SealError> {
    let params = NOISE_PARAMS.parse().map_err(|e| noise(&e))?;
    Ok((params, blake3::derive_key(PSK_CONTEXT, key.material())))
}

/// The connector's key exchange under way.
pub struct KeyExchange(snow::HandshakeState);

impl fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyExchange(..)")
    }
}

/// The connector starts the exchange: its state, and the first message (for its PROOF).
pub fn initiate(
    key: &HandshakeKey,
    connector_hello: &[u8],
    acceptor_hello: &[u8],
) -> Result<(KeyExchange, Vec<u8>), SealError> {
    let (params, psk) = builder_parts(key)?;
    let prologue = prologue(connector_hello, acceptor_hello);
    let mut state = snow::Builder::new(params)
        .psk(0, &psk)
        .prologue(&prologue)
        .build_initiator()
        .map_err(|e| noise(&e))?;
    let mut msg = vec![0; 256];
    let n = state.write_message(&[], &mut msg).map_err(|e| noise(&e))?;
    msg.truncate(n);
    Ok((KeyExchange(state), msg))
}

/// The acceptor answers the connector's first message: its keys, and the second
/// message (for its ACCEPT). Fails if the connector does not hold the secret.
pub fn respond(
    key: &HandshakeKey,
    connector_hello: &[u8],
    acceptor_hello: &[u8],
    first: &[u8],
) -> Result<(LinkKeys, Vec<u8>), SealError> {
    let (params, psk) = builder_parts(key)?;
    let prologue = prologue(connector_hello, acceptor_hello);
    let mut state = snow::Builder::new(params)
        .psk(0, &psk)
        .prologue(&prologue)
        .build_responder()
        .map_err(|e| noise(&e))?;
    let mut scratch = vec![0; 256];
    state.read_message(first, &mut scratch).map_err(|e| noise(&e))?;
    let mut msg = vec![0; 256];
    let n = state.write_message(&[], &mut msg).map_err(|e| noise(&e))?;
    msg.truncate(n);
    Ok((LinkKeys::of(state)?, msg))
}

impl KeyExchange {
    /// The connector finishes with the acceptor's message: its keys.
    pub fn finish(mut self, second: &[u8]) -> Result<LinkKeys, SealError> {
        let mut scratch = vec![0; 256];
        self.0.read_message(second, &mut scratch).map_err(|e| noise(&e))?;
        LinkKeys::of(self.0)
    }
}

/// A connection's keys: one direction each.
#[derive(Debug)]
pub struct LinkKeys {
    /// Seals what this side writes.
    pub sealer: Sealer,
    /// Opens what this side reads.
    pub opener: Opener,
}

impl LinkKeys {
    fn of(state: snow::HandshakeState) -> Result<LinkKeys, SealError> {
        let state = Arc::new(state.into_stateless_transport_mode().map_err(|e| noise(&e))?);
        Ok(LinkKeys {
            sealer: Sealer { state: state.clone(), next: 0 },
            opener: Opener { state, next: 0 },
        })
    }
}

/// Seals the bytes one side writes, numbering its records.
pub struct Sealer {
    state: Arc<StatelessTransportState>,
    next: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").field("next", &self.next).finish_non_exhaustive()
    }
}

impl Sealer {
    /// Appends `plain` to `out` as records (one per [`RECORD_PLAIN_MAX`] bytes), each
    /// numbered with the next sequence number. Call it in the order the records go on
    /// the wire (under the connection's write turn). Fails only when the sequence
    /// numbers are exhausted (2^64 records); the connection must then close.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let records = plain.len().div_ceil(RECORD_PLAIN_MAX).max(1);
        out.reserve(plain.len() + records * (RECORD_HEADER_BYTES + TAG_BYTES));
        for chunk in plain.chunks(RECORD_PLAIN_MAX) {
            let at = out.len();
            let len = chunk.len() + TAG_BYTES;
            // `len` is at most RECORD_BYTES_MAX, so it fits a u16.
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.resize(at + RECORD_HEADER_BYTES + len, 0);
            let written = self
                .state
                .write_message(self.next, chunk, &mut out[at + RECORD_HEADER_BYTES..])
                .map_err(|e| {
                    out.truncate(at);
                    io::Error::other(noise(&e))
                })?;
            debug_assert_eq!(written, len);
            self.next += 1;
        }
        Ok(())
    }

    /// Seals `buf[from..]` in place (the bytes before `from` are sealed already, or
    /// plaintext that is no frame of this connection's), through `scratch`.
    pub fn seal_tail(
        &mut self,
        buf: &mut Vec<u8>,
        from: usize,
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        scratch.clear();
        self.seal(&buf[from..], scratch)?;
        buf.truncate(from);
        buf.extend_from_slice(scratch);
        Ok(())
    }
}

/// Opens the records one side reads, checking their numbers.
pub struct Opener {
    state: Arc<StatelessTransportState>,
    next: u64,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener").field("next", &self.next).finish_non_exhaustive()
    }
}

impl Opener {
    /// Opens the record `ciphertext` (the next one in sequence) into `plain`.
    fn open(&mut self, ciphertext: &[u8], plain: &mut Vec<u8>) -> io::Result<()> {
        let refused =
            |sequence| io::Error::new(io::ErrorKind::InvalidData, Unauthenticated { sequence });
        if ciphertext.len() < TAG_BYTES {
            return Err(refused(self.next));
        }
        plain.resize(ciphertext.len() - TAG_BYTES, 0);
        if let Ok(n) = self.state.read_message(self.next, ciphertext, plain) {
            plain.truncate(n);
            self.next += 1;
            Ok(())
        } else {
            plain.clear();
            Err(refused(self.next))
        }
    }
}

/// The reading side of a sealed connection: yields the frames' bytes of records whose
/// tags verified, in order; a record that fails is an [`Unauthenticated`] io error
/// (and every later read fails too). Keeps a partial record across reads that time
/// out, so it fits a socket with a short read timeout.
pub struct SealedReader<R> {
    inner: R,
    opener: Opener,
    raw: Box<[u8]>,
    start: usize,
    end: usize,
    plain: Vec<u8>,
    at: usize,
    failed: Option<u64>,
}

impl<R> fmt::Debug for SealedReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedReader").field("opener", &self.opener).finish_non_exhaustive()
    }
}

impl<R: Read> SealedReader<R> {
    /// Reads records from `inner` and opens them with `opener`.
    pub fn new(inner: R, opener: Opener) -> SealedReader<R> {
        SealedReader {
            inner,
            opener,
            raw: vec![0; RAW_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            plain: Vec::new(),
            at: 0,
            failed: None,
        }
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The ciphertext of the whole record at the start of the raw buffer, if it is
    /// there.
    fn whole_record(&self) -> Option<(usize, usize)> {
        let have = &self.raw[self.start..self.end];
        let (len, rest) = have.split_first_chunk::<RECORD_HEADER_BYTES>()?;
        let len = usize::from(u16::from_le_bytes(*len));
        (rest.len() >= len).then_some((self.start + RECORD_HEADER_BYTES, len))
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Bounded: each turn hands out bytes, opens a record, or reads the socket
        // (which returns, times out or fails).
        loop {
            if let Some(sequence) = self.failed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Unauthenticated { sequence },
                ));
            }
            if self.at < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.at);
                buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if let Some((from, len)) = self.whole_record() {
                self.at = 0;
                let ciphertext = &self.raw[from..from + len];
                if let Err(e) = self.opener.open(ciphertext, &mut self.plain) {
                    self.failed = Some(self.opener.next);
                    return Err(e);
                }
                self.start = from + len;
                continue;
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.raw.len() - self.start < RECORD_HEADER_BYTES + RECORD_BYTES_MAX {
                // Room for a whole record after the partial one.
                self.raw.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let n = self.inner.read(&mut self.raw[self.end..])?;
            if n == 0 {
                // The end of the stream (a partial record is dropped with it).
                return Ok(0);
            }
            self.end += n;
        }
    }
}

/// The reading side of a connection after its handshake: plaintext frames, or records
/// opened by a [`SealedReader`].
#[derive(Debug)]
pub enum LinkReader<R> {
    /// A plaintext link.
    Plain(R),
    /// A sealed link.
    Sealed(Box<SealedReader<R>>),
}

impl<R: Read> LinkReader<R> {
    /// The reading side of a connection: sealed if the handshake gave an opener.
    pub fn new(inner: R, opener: Option<Opener>) -> LinkReader<R> {
        match opener {
            Some(opener) => LinkReader::Sealed(Box::new(SealedReader::new(inner, opener))),
            None => LinkReader::Plain(inner),
        }
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        match self {
            LinkReader::Plain(r) => r,
            LinkReader::Sealed(s) => s.get_ref(),
        }
    }
}

impl<R: Read> Read for LinkReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            LinkReader::Plain(r) => r.read(buf),
            LinkReader::Sealed(s) => s.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (LinkKeys, LinkKeys) {
        let key = HandshakeKey::derive(b"a cluster secret of sixteen bytes");
        let (kx, first) = initiate(&key, b"c hello", b"a hello").unwrap();
        let (acceptor, second) = respond(&key, b"c hello", b"a hello", &first).unwrap();
        (kx.finish(&second).unwrap(), acceptor)
    }

    fn read_all<R: Read>(r: &mut R) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn records_round_trip_across_record_bounds() {
        let (mut c, a) = pair();
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        c.sealer.seal(b"first frame", &mut wire).unwrap();
        c.sealer.seal(&big, &mut wire).unwrap();
        let mut reader = SealedReader::new(&wire[..], a.opener);
        let got = read_all(&mut reader).unwrap();
        assert_eq!(&got[..11], b"first frame");
        assert_eq!(&got[11..], &big[..]);
    }

    #[test]
    fn a_flipped_replayed_or_injected_record_is_refused() {
        let (mut c, a) = pair();
        let mut one = Vec::new();
        c.sealer.seal(b"one", &mut one).unwrap();
        let mut two = Vec::new();
        c.sealer.seal(b"two", &mut two).unwrap();
        // Flipped: any byte of the ciphertext.
        let mut flipped = one.clone();
        flipped[4] ^= 0x20;
        let mut r = SealedReader::new(&flipped[..], a.opener);
        let e = read_all(&mut r).unwrap_err();
        assert!(is_unauthenticated(&e), "{e}");
        // Replayed: record 0 twice.
        let (mut c, a) = pair();
        let mut one = Vec::new();
        c.sealer.seal(b"one", &mut one).unwrap();
        let replay = [one.clone(), one].concat();
        let mut r = SealedReader::new(&replay[..], a.opener);
        let mut buf = [0; 3];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"one");
        assert!(is_unauthenticated(&r.read(&mut buf).unwrap_err()));
        // Reordered: record 1 first.
        let (mut c, a) = pair();
        let (mut one, mut two) = (Vec::new(), Vec::new());
        c.sealer.seal(b"one", &mut one).unwrap();
        c.sealer.seal(b"two", &mut two).unwrap();
        let reordered = [two, one].concat();
        let mut r = SealedReader::new(&reordered[..], a.opener);
        assert!(is_unauthenticated(&r.read(&mut buf).unwrap_err()));
        // Injected: a record sealed by another connection's keys.
        let (mut other, _) = pair();
        let (_, a) = pair();
        let mut forged = Vec::new();
        other.sealer.seal(b"evil", &mut forged).unwrap();
        let mut r = SealedReader::new(&forged[..], a.opener);
        assert!(is_unauthenticated(&r.read(&mut buf).unwrap_err()));
    }

    #[test]
    fn the_key_exchange_needs_the_same_secret_and_hellos() {
        let key = HandshakeKey::derive(b"a cluster secret of sixteen bytes");
        let other = HandshakeKey::derive(b"another secret of sixteen bytes!");
        let (_, first) = initiate(&key, b"c", b"a").unwrap();
        assert!(respond(&other, b"c", b"a", &first).is_err(), "another secret");
        let (_, first) = initiate(&key, b"c", b"a").unwrap();
        assert!(respond(&key, b"c", b"b", &first).is_err(), "another hello");
    }
}
