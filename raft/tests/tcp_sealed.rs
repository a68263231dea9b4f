//! Sealed links of the TCP transport against a man in the middle: a proxy between two
//! stores that alters, replays or injects bytes after the handshake gets the connection
//! closed with a warning, and nothing of it delivered; and stores that run sealed and
//! plaintext links refuse each other in the handshake. Only 127.0.0.1, ephemeral ports,
//! every wait bounded.

use std::error::Error;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};
use regionkv_engine::{Epoch, RegionId, StoreId};
use regionkv_raft::transport::tcp::{Backoff, TcpConfig, TcpTransport};
use regionkv_raft::transport::wire::{
    self, ClusterId, FRAME_HEADER_BYTES, FrameKind, RejectReason,
};
use regionkv_raft::transport::{Body, Envelope, Inbox, Transport};

#[path = "support/warn_log.rs"]
mod warn_log;
use warn_log::{capture_warnings, logged};

type TestResult = Result<(), Box<dyn Error>>;

const SECRET: &[u8] = b"the cluster secret of the sealed test cluster";
const CLUSTER: ClusterId = ClusterId(9);

#[derive(Default)]
struct Collect(Mutex<Vec<Envelope>>);

impl Inbox for Collect {
    fn deliver(&self, envelopes: Vec<Envelope>) {
        self.0.lock().unwrap().extend(envelopes);
    }
}

impl Collect {
    fn indexes(&self) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| match &e.body {
                Body::Raft(m) => m.index,
                _ => u64::MAX,
            })
            .collect()
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

fn config(store: u64) -> TcpConfig {
    let mut c = TcpConfig::new(StoreId(store), "127.0.0.1:0".parse().unwrap(), CLUSTER, SECRET);
    c.handshake_timeout = Duration::from_secs(3);
    c.backoff = Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(200) };
    c.poll_interval = Duration::from_millis(20);
    c.shutdown_timeout = Duration::from_secs(5);
    c
}

fn start(config: TcpConfig) -> Result<(TcpTransport, Arc<Collect>), Box<dyn Error>> {
    let inbox = Arc::new(Collect::default());
    let transport = TcpTransport::start(config, inbox.clone())?;
    Ok((transport, inbox))
}

fn raft_msg(from: u64, to: u64, i: u64) -> Envelope {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = from;
    m.to = to;
    m.term = 1;
    m.index = i;
    Envelope {
        region: RegionId(1),
        from: StoreId(from),
        to: StoreId(to),
        epoch: Some(Epoch { conf_ver: 1, version: 1 }),
        range: None,
        body: Body::Raft(m),
    }
}

/// What the proxy does to the first connection, after the handshake, to the
/// connector's second record (the first goes through untouched).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    /// One bit of the record's ciphertext flipped.
    Flip,
    /// The first record sent again in its place.
    Replay,
    /// A well-formed plaintext BATCH frame sent before it.
    Inject,
}

/// Reads exactly `n` bytes; `None` at the end of the stream.
fn read_n(from: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0; n];
    from.read_exact(&mut buf).ok().map(|()| buf)
}

/// Copies `from` to `to` until either ends.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// The connector's side of the first connection: two handshake frames (HELLO and
/// PROOF) as they are, then records, the second one attacked; `seen` gets every
/// record's bytes as they went by (before the attack).
fn attack_connector(
    mut from: TcpStream,
    mut to: TcpStream,
    attack: Attack,
    seen: &Mutex<Vec<Vec<u8>>>,
) -> Option<()> {
    for _ in 0..2 {
        let header = read_n(&mut from, FRAME_HEADER_BYTES)?;
        let len = u32::from_le_bytes(header[6..10].try_into().ok()?) as usize;
        let payload = read_n(&mut from, len)?;
        to.write_all(&[header, payload].concat()).ok()?;
    }
    let mut first = None;
    for n in 0.. {
        let prefix = read_n(&mut from, 2)?;
        let len = usize::from(u16::from_le_bytes([prefix[0], prefix[1]]));
        let record = [prefix, read_n(&mut from, len)?].concat();
        seen.lock().unwrap().push(record.clone());
        let out = match (n, attack) {
            (1, Attack::Flip) => {
                let mut r = record;
                let at = r.len() / 2;
                r[at] ^= 0x04;
                r
            }
            (1, Attack::Replay) => first.clone()?,
            (1, Attack::Inject) => {
                // Large enough that the length its magic reads as (19,282 bytes) is all
                // there, then the real record.
                let batch: Vec<Envelope> = (0..400).map(|_| raft_msg(61, 62, 99)).collect();
                let frame = wire::encode_frame(FrameKind::Batch, &wire::encode_batch(&batch).ok()?);
                [frame.ok()?, record].concat()
            }
            _ => record,
        };
        if n == 0 {
            first = Some(out.clone());
        }
        to.write_all(&out).ok()?;
    }
    Some(())
}

/// A proxy to `target` on a port of its own: the first connection is attacked, later
/// ones pass untouched.
fn proxy(target: SocketAddr, attack: Attack) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let records = seen.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(client) = conn else { return };
            let Ok(server) = TcpStream::connect(target) else { return };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pipe(s2, c2));
            let seen = records.clone();
            std::thread::spawn(move || {
                if n == 0 {
                    attack_connector(client, server, attack, &seen);
                } else {
                    pipe(client, server);
                }
            });
        }
    });
    (addr, seen)
}

fn attacked(attack: Attack) -> TestResult {
    capture_warnings();
    let (b, b_inbox) = start(config(62))?;
    let (a, _) = start(config(61))?;
    let (via, seen) = proxy(b.local_addr(), attack);
    a.set_peer_addr(StoreId(62), via)?;
    a.send(vec![raft_msg(61, 62, 1)]);
    assert!(wait_until(Duration::from_secs(10), || b_inbox.indexes() == [1]), "{attack:?}");
    a.send(vec![raft_msg(61, 62, 2)]);
    assert!(
        wait_until(Duration::from_secs(10), || b.stats().unauthenticated_records == 1),
        "{attack:?}: {:?}",
        b.stats()
    );
    assert_eq!(b_inbox.indexes(), [1], "{attack:?}: nothing of the attacked record delivered");
    assert!(logged(&["WARN", "closing tcp connection", "failed its authentication"]));
    // What went by was ciphertext: no frame magic in it.
    for record in seen.lock().unwrap().iter() {
        assert!(!record.windows(4).any(|w| w == wire::MAGIC), "{attack:?}: plaintext seen");
    }
    // A (reconnected, untouched) connection carries later envelopes.
    assert!(
        wait_until(Duration::from_secs(10), || {
            a.send(vec![raft_msg(61, 62, 3)]);
            b_inbox.indexes().contains(&3)
        }),
        "{attack:?}"
    );
    assert!(!b_inbox.indexes().contains(&99), "{attack:?}: the injected frame was not decoded");
    a.shutdown();
    b.shutdown();
    Ok(())
}

#[test]
fn a_flipped_bit_after_the_handshake_closes_the_connection() -> TestResult {
    attacked(Attack::Flip)
}

#[test]
fn a_replayed_record_closes_the_connection() -> TestResult {
    attacked(Attack::Replay)
}

#[test]
fn an_injected_plaintext_frame_closes_the_connection() -> TestResult {
    attacked(Attack::Inject)
}

/// A store that runs plaintext links and one that runs sealed links refuse each other
/// in the handshake, each way round, with the reason; nothing is delivered.
#[test]
fn sealed_and_plaintext_stores_refuse_each_other() -> TestResult {
    for (dialer_insecure, id) in [(true, 71), (false, 73)] {
        let (acceptor, inbox) = start(TcpConfig { insecure: !dialer_insecure, ..config(id + 1) })?;
        let (dialer, _) = start(TcpConfig { insecure: dialer_insecure, ..config(id) })?;
        dialer.set_peer_addr(acceptor.store(), acceptor.local_addr())?;
        dialer.send(vec![raft_msg(id, id + 1, 1)]);
        let refused = |t: &TcpTransport| {
            t.recent_rejections().iter().any(|r| r.reason == Some(RejectReason::LinkMismatch))
        };
        assert!(
            wait_until(Duration::from_secs(10), || refused(&acceptor) && refused(&dialer)),
            "dialer insecure {dialer_insecure}: {:?} / {:?}",
            acceptor.recent_rejections(),
            dialer.recent_rejections()
        );
        assert!(inbox.indexes().is_empty());
        assert_eq!(acceptor.stats().bad_frames, 0, "a refusal, not garbage");
        dialer.shutdown();
        acceptor.shutdown();
    }
    Ok(())
}
