//! The writing side of a client connection: frames queued by any number of threads
//! and written by whichever of them finds no write in progress, everything queued at
//! once (one system call for the requests of many threads, and no writer thread to
//! wake).

use std::io::{self, Write};

use parking_lot::Mutex;
use regionkv_raft::transport::seal::Sealer;

/// Frames waiting for one connection's socket, and whether a thread is writing them.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Whole frames, in the order they were queued.
    queued: Vec<u8>,
    /// A thread is in [`Outbox::send`]'s write loop: it writes what is queued before
    /// it leaves.
    writing: bool,
    /// The writer's buffer between rounds (swapped with `queued`), kept to reuse.
    spare: Vec<u8>,
    /// Seals each frame as it is queued, on a sealed link: under the lock, so records
    /// are numbered in the order they go on the wire.
    sealer: Option<Sealer>,
    /// A sealing failed (sequence numbers exhausted): every later send fails.
    broken: bool,
}

/// Spare capacity kept between writes; a larger buffer (a large write batch) is freed.
const SPARE_BYTES_MAX: usize = 256 << 10;

impl Outbox {
    /// An outbox that seals its frames with `sealer` (a sealed link), or sends them as
    /// they are (`None`: a plaintext link).
    pub fn new(sealer: Option<Sealer>) -> Outbox {
        Outbox { state: Mutex::new(State { sealer, ..State::default() }) }
    }

    /// Queues `frame` (a whole frame) and, unless another thread is writing, writes
    /// everything queued to `out`, own frame and any others, until nothing is left:
    /// frames queued while it writes go out with its next `write_all`. Frames keep the
    /// order in which they were queued.
    ///
    /// An error means the connection is broken: what was queued is dropped (its
    /// requests' answers will not come), and the caller closes the connection.
    pub fn send<W: Write>(&self, frame: &[u8], mut out: W) -> io::Result<()> {
        let mut state = self.state.lock();
        let State { queued, sealer, broken, .. } = &mut *state;
        match sealer {
            _ if *broken => return Err(io::Error::other("the link's records ran out")),
            Some(sealer) => {
                if let Err(e) = sealer.seal(frame, queued) {
                    *broken = true;
                    return Err(e);
                }
            }
            None => queued.extend_from_slice(frame),
        }
        if state.writing {
            // The thread that writes takes this frame with the next round.
            return Ok(());
        }
        state.writing = true;
        // Bounded by the load: a round happens only if frames were queued during the
        // previous one, and each of those belongs to a request that waits for its
        // answer (at most IN_FLIGHT_MAX per connection).
        loop {
            let mut batch = std::mem::take(&mut state.spare);
            std::mem::swap(&mut batch, &mut state.queued);
            drop(state);
            let written = out.write_all(&batch);
            state = self.state.lock();
            if let Err(e) = written {
                state.queued.clear();
                state.writing = false;
                return Err(e);
            }
            if batch.capacity() <= SPARE_BYTES_MAX {
                batch.clear();
                state.spare = batch;
            }
            if state.queued.is_empty() {
                state.writing = false;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    /// A socket whose first write waits for `release`; it counts the writes.
    struct SlowSocket {
        release: Arc<Barrier>,
        log: Arc<Mutex<(usize, Vec<u8>)>>,
    }

    impl Write for SlowSocket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let first = self.log.lock().0 == 0;
            if first {
                self.release.wait();
            }
            let mut log = self.log.lock();
            log.0 += 1;
            log.1.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Regression (issue 13, cause 3): a client made one `write` system call per
    /// request, each thread in turn under the connection's lock. Requests queued while
    /// another thread writes now go out together with its next write, in order.
    #[test]
    fn frames_queued_during_a_write_go_out_in_one_more_write() {
        let outbox = Arc::new(Outbox::default());
        let release = Arc::new(Barrier::new(2));
        let log = Arc::new(Mutex::new((0, Vec::new())));
        let socket = || SlowSocket { release: release.clone(), log: log.clone() };
        let first = {
            let (outbox, socket) = (outbox.clone(), socket());
            std::thread::spawn(move || outbox.send(b"[0]", socket))
        };
        // Wait until the first thread is writing (it holds the write role).
        while !outbox.state.lock().writing {
            std::thread::yield_now();
        }
        let others: Vec<_> = (1..10)
            .map(|i| {
                let (outbox, socket) = (outbox.clone(), socket());
                std::thread::spawn(move || outbox.send(format!("[{i}]").as_bytes(), socket))
            })
            .collect();
        // They find a write in progress: each queues its frame and returns (waited for
        // at most 5 s: a writer that made them wait would fail the count below).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while outbox.state.lock().queued.len() < 27 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        release.wait();
        first.join().unwrap().unwrap();
        for other in others {
            other.join().unwrap().unwrap();
        }
        let (writes, bytes) = std::mem::take(&mut *log.lock());
        assert_eq!(writes, 2, "one write for the first frame, one for the nine queued");
        // The first frame, then the nine in the order their threads queued them.
        assert_eq!(&bytes[..3], b"[0]");
        let mut frames: Vec<&[u8]> = bytes.chunks(3).collect();
        frames.sort_unstable();
        let expected: Vec<Vec<u8>> = (0..10).map(|i| format!("[{i}]").into_bytes()).collect();
        assert_eq!(frames, expected);
        assert!(!outbox.state.lock().writing);
    }

    #[test]
    fn a_failed_write_drops_what_was_queued_and_the_next_send_writes() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let outbox = Outbox::default();
        assert!(outbox.send(b"lost", Broken).is_err());
        let mut out = Vec::new();
        outbox.send(b"next", &mut out).unwrap();
        assert_eq!(out, b"next");
    }
}
