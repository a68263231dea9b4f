//! The status address (`regionkv node --status-addr`): an HTTP server on its own
//! threads (`tiny_http`: blocking, no async runtime) answering `GET /metrics` with
//! the store's figures in the Prometheus text format (`prometheus.rs`) and
//! `GET /health` with 200 while the store serves, 503 with the reason otherwise;
//! any other path is 404, any other method on these 405.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// What the status server asks its owner (a `Node`).
pub(crate) trait StatusSource: Send + Sync + 'static {
    /// The metrics, as Prometheus text.
    fn metrics_text(&self) -> String;
    /// `Ok` while the store serves, else why not (one line).
    fn health(&self) -> std::result::Result<(), String>;
}

/// A running status server; [`StatusServer::stop`] (or drop) ends it.
pub(crate) struct StatusServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl StatusServer {
    /// Binds `addr` (port 0: any) and serves `source` on a thread named `name`.
    pub(crate) fn start(
        addr: SocketAddr,
        source: Arc<dyn StatusSource>,
        name: String,
    ) -> Result<StatusServer> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| Error::Config(format!("the status address {addr}: {e}")))?;
        let addr = server.server_addr().to_ip().ok_or_else(|| {
            Error::Config(format!("the status address {addr} is not an IP address"))
        })?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                // `recv` fails once `unblock` is called (or the listener broke).
                while let Ok(request) = serving.recv() {
                    answer(request, source.as_ref());
                }
            })
            .map_err(Error::Io)?;
        Ok(StatusServer { server, addr, thread: Mutex::new(Some(thread)) })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread. Idempotent.
    pub(crate) fn stop(&self) {
        self.server.unblock();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Answers one request (a failed write means the scraper went away: nothing to do).
fn answer(request: tiny_http::Request, source: &dyn StatusSource) {
    let path = request.url().split('?').next().unwrap_or_default();
    let known = matches!(path, "/metrics" | "/health");
    let get = matches!(request.method(), tiny_http::Method::Get | tiny_http::Method::Head);
    let (status, content_type, body) = match (known, get, path) {
        (false, _, _) => {
            (404, "text/plain; charset=utf-8", "not found: try /metrics or /health\n".to_owned())
        }
        (true, false, _) => {
            (405, "text/plain; charset=utf-8", "method not allowed: use GET\n".to_owned())
        }
        (true, true, "/metrics") => (200, crate::prometheus::CONTENT_TYPE, source.metrics_text()),
        (true, true, _) => match source.health() {
            Ok(()) => (200, "text/plain; charset=utf-8", "serving\n".to_owned()),
            Err(why) => (503, "text/plain; charset=utf-8", format!("{}\n", one_line(&why))),
        },
    };
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
        .expect("a valid header");
    let response =
        tiny_http::Response::from_string(body).with_status_code(status).with_header(header);
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "a status request's answer was not written");
    }
}

/// `text` on one line (a failure's text may hold several).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
