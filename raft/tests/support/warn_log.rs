//! Warn-level log lines of every test in one test binary, for tests that check that a
//! refusal was logged (`#[path]`-included by the TCP tests).

use std::io::Write;
use std::sync::{Mutex, Once};

/// Warn-level log lines of every test in this binary.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends this binary's warn lines to the buffer `logged` reads (once per binary).
pub fn capture_warnings() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(|| LogWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    });
}

/// True if one warn line so far holds every one of `needles`.
pub fn logged(needles: &[&str]) -> bool {
    let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
    logs.lines().any(|line| needles.iter().all(|n| line.contains(n)))
}
