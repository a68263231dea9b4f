//! The TCP transport's errors: [`TcpError`], and the record of a failed handshake
//! ([`Rejection`], [`Direction`]).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::transport::frame::{FrameError, WireError};
use crate::transport::handshake::{HandshakeError, RejectReason};

/// What went wrong in the TCP transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// The configuration is unusable; fix it and start again.
    #[error("invalid TCP transport config: {0}")]
    Config(&'static str),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}; is the address in use?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A socket operation failed (the peer went away, the network is down, ...).
    #[error("network I/O failed: {0}")]
    Io(#[from] io::Error),
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
    /// Bytes from the peer failed the wire format's checks.
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    /// We refused the peer's handshake.
    #[error("refused the peer: {reason} ({detail})")]
    Rejected {
        /// Why, as sent to the peer.
        reason: RejectReason,
        /// The particulars, for our log only.
        detail: String,
    },
    /// The peer refused our handshake.
    #[error("the peer refused us: {0}")]
    RefusedByPeer(RejectReason),
    /// The operating system gave no randomness for a handshake nonce.
    #[error("no randomness for a handshake nonce: {0}")]
    Random(String),
    /// The transport is shutting down.
    #[error("the TCP transport is shutting down")]
    Cancelled,
}

impl TcpError {
    /// True for errors caused by shutdown. Exhaustive on purpose.
    pub fn is_cancelled(&self) -> bool {
        match self {
            TcpError::Cancelled => true,
            TcpError::Config(_)
            | TcpError::Bind { .. }
            | TcpError::Io(_)
            | TcpError::Closed
            | TcpError::Timeout { .. }
            | TcpError::Wire(_)
            | TcpError::Rejected { .. }
            | TcpError::RefusedByPeer(_)
            | TcpError::Random(_) => false,
        }
    }

    /// True if a handshake was refused, by either side.
    pub fn is_refusal(&self) -> bool {
        self.reject_reason().is_some()
    }

    /// The refusal reason, for refusals. Exhaustive on purpose: a new variant must say
    /// whether it is one.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            TcpError::Rejected { reason, .. } | TcpError::RefusedByPeer(reason) => Some(*reason),
            TcpError::Config(_)
            | TcpError::Bind { .. }
            | TcpError::Io(_)
            | TcpError::Closed
            | TcpError::Timeout { .. }
            | TcpError::Wire(_)
            | TcpError::Random(_)
            | TcpError::Cancelled => None,
        }
    }
}

/// Which way a connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// We accepted it.
    Inbound,
    /// We dialed it.
    Outbound,
}

/// A handshake that failed after the TCP connection was up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The remote address.
    pub remote: SocketAddr,
    /// Which way the connection went.
    pub direction: Direction,
    /// The refusal reason when either side refused; `None` for garbage bytes, a
    /// timeout or a closed connection.
    pub reason: Option<RejectReason>,
    /// The error, as logged.
    pub detail: String,
}

impl From<FrameError> for TcpError {
    fn from(e: FrameError) -> TcpError {
        match e {
            FrameError::Closed => TcpError::Closed,
            FrameError::Timeout { what, after } => TcpError::Timeout { what, after },
            FrameError::Cancelled => TcpError::Cancelled,
            FrameError::Io(e) => TcpError::Io(e),
            FrameError::Wire(e) => TcpError::Wire(e),
        }
    }
}

impl From<HandshakeError> for TcpError {
    fn from(e: HandshakeError) -> TcpError {
        match e {
            HandshakeError::Frame(e) => e.into(),
            HandshakeError::Rejected { reason, detail } => TcpError::Rejected { reason, detail },
            HandshakeError::RefusedByPeer(reason) => TcpError::RefusedByPeer(reason),
            HandshakeError::Random(e) => TcpError::Random(e),
        }
    }
}
