//! The TCP transport's configuration: [`TcpConfig`] with its defaults and checks, and
//! the reconnect [`Backoff`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use regionkv_engine::StoreId;

use super::TcpError;
use crate::identity::PeerBook;
use crate::transport::handshake::{ClusterId, HANDSHAKE_FRAME_BYTES_MAX};

/// The shortest cluster secret accepted.
pub const SECRET_BYTES_MIN: usize = 16;
/// The smallest frame bound accepted: room for a handshake frame.
pub const FRAME_BYTES_MIN: u32 = HANDSHAKE_FRAME_BYTES_MAX;

/// Reconnect delays: `initial`, doubling after each failed attempt, never above `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(5) }
    }
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (0 after the first failure).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.initial.saturating_mul(1 << attempt.min(20)).min(self.max)
    }
}

/// How a [`TcpTransport`](super::TcpTransport) runs. [`TcpConfig::new`] fills in defaults for everything
/// but the identity and the secret.
#[derive(Clone)]
pub struct TcpConfig {
    /// This store.
    pub store: StoreId,
    /// Where to listen (port 0: any free port; see [`TcpTransport::local_addr`](super::TcpTransport::local_addr)).
    pub listen_addr: SocketAddr,
    /// The cluster; peers of another cluster are refused.
    pub cluster: ClusterId,
    /// The secret shared by the cluster's stores, at least [`SECRET_BYTES_MIN`] bytes.
    /// It never leaves the process.
    pub secret: Vec<u8>,
    /// The peer stores' listen addresses; see also [`TcpTransport::set_peer_addr`](super::TcpTransport::set_peer_addr).
    pub peers: HashMap<StoreId, SocketAddr>,
    /// The largest frame payload sent or read (default 64 MiB); larger frames are
    /// refused from their header, before their payload is read.
    pub frame_bytes_max: u32,
    /// A batch frame is closed once its payload reaches this (default 4 MiB).
    pub batch_bytes_max: usize,
    /// Envelopes queued per peer (default 4096); beyond it `send` drops.
    pub queue_capacity: usize,
    /// Estimated bytes queued per peer (default 64 MiB); beyond it `send` drops.
    pub queue_bytes_max: usize,
    /// Giving up on a TCP connect (default 1 s).
    pub connect_timeout: Duration,
    /// The whole handshake must finish within this (default 5 s).
    pub handshake_timeout: Duration,
    /// A write that makes no progress for this long fails (default 10 s).
    pub write_timeout: Duration,
    /// A frame whose bytes stop arriving for this long closes the connection
    /// (default 30 s). Silence between frames is fine.
    pub stall_timeout: Duration,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Accepted connections served at once (default 64); more are refused.
    pub inbound_connections_max: usize,
    /// How often blocked threads look at the cancellation token (default 50 ms).
    pub poll_interval: Duration,
    /// How long shutdown waits for threads (default 10 s).
    pub shutdown_timeout: Duration,
    /// This store's identity: its incarnation goes in every HELLO, and each peer's is
    /// vetted by the book once the peer proved the secret (a replaced store is refused
    /// with `RejectReason::Replaced`; see `crate::identity`). `None` (default): no
    /// incarnation is sent and none is checked.
    pub identity: Option<Arc<PeerBook>>,
    /// Plaintext links (for benchmarks): frames go on the wire unencrypted and
    /// unauthenticated after the handshake. `false` (default): sealed links
    /// (`crate::transport::seal`). Stores of both kinds refuse each other.
    pub insecure: bool,
}

impl fmt::Debug for TcpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConfig")
            .field("store", &self.store)
            .field("listen_addr", &self.listen_addr)
            .field("cluster", &self.cluster)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("peers", &self.peers)
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("batch_bytes_max", &self.batch_bytes_max)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_bytes_max", &self.queue_bytes_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("backoff", &self.backoff)
            .field("inbound_connections_max", &self.inbound_connections_max)
            .field("poll_interval", &self.poll_interval)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("identity", &self.identity.as_ref().map(|b| b.identity()))
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl TcpConfig {
    /// A config with default limits and no peers.
    pub fn new(
        store: StoreId,
        listen_addr: SocketAddr,
        cluster: ClusterId,
        secret: impl Into<Vec<u8>>,
    ) -> TcpConfig {
        TcpConfig {
            store,
            listen_addr,
            cluster,
            secret: secret.into(),
            peers: HashMap::new(),
            frame_bytes_max: 64 << 20,
            batch_bytes_max: 4 << 20,
            queue_capacity: 4096,
            queue_bytes_max: 64 << 20,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            inbound_connections_max: 64,
            poll_interval: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(10),
            identity: None,
            insecure: false,
        }
    }

    pub(super) fn validate(&self) -> Result<(), TcpError> {
        let checks = [
            (self.secret.len() >= SECRET_BYTES_MIN, "the cluster secret is shorter than 16 bytes"),
            (self.frame_bytes_max >= FRAME_BYTES_MIN, "frame_bytes_max is below 1 KiB"),
            (
                self.batch_bytes_max > 0 && self.batch_bytes_max <= self.frame_bytes_max as usize,
                "batch_bytes_max must be in 1..=frame_bytes_max",
            ),
            (self.queue_capacity > 0, "queue_capacity is 0"),
            (self.queue_bytes_max > 0, "queue_bytes_max is 0"),
            (self.inbound_connections_max > 0, "inbound_connections_max is 0"),
            (
                !self.poll_interval.is_zero() && self.poll_interval <= Duration::from_secs(1),
                "poll_interval must be in (0, 1 s]",
            ),
            (
                !self.backoff.initial.is_zero() && self.backoff.max >= self.backoff.initial,
                "backoff needs 0 < initial <= max",
            ),
            (
                [
                    self.connect_timeout,
                    self.handshake_timeout,
                    self.write_timeout,
                    self.stall_timeout,
                ]
                .iter()
                .all(|t| !t.is_zero()),
                "timeouts must not be zero",
            ),
            (!self.peers.contains_key(&self.store), "the peer list names this store"),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(TcpError::Config(what)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(100) };
        let delays: Vec<u128> = (0..6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn configs_are_validated_and_the_secret_is_not_printed() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let good =
            TcpConfig::new(StoreId(1), addr, ClusterId(1), b"0123456789abcdef-secret".to_vec());
        assert!(good.validate().is_ok());
        assert!(!format!("{good:?}").contains("0123456789abcdef"));
        let short = TcpConfig { secret: b"short".to_vec(), ..good.clone() };
        assert!(matches!(short.validate(), Err(TcpError::Config(_))));
        let batch =
            TcpConfig { batch_bytes_max: 1 << 30, frame_bytes_max: 1 << 20, ..good.clone() };
        assert!(matches!(batch.validate(), Err(TcpError::Config(_))));
        let mut own = good;
        own.peers.insert(StoreId(1), addr);
        assert!(matches!(own.validate(), Err(TcpError::Config(_))));
    }
}
