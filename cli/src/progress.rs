//! Progress on long CLI work (the demo's phases, each bench figure, a node's recovery
//! on open): a bar drawn by `indicatif` when stdout is a terminal, plain lines when it
//! is not (a log, a pipe, a test), so that what a script reads stays line by line.
//!
//! Plain lines are few on purpose: a counted task prints at each quarter of its total,
//! a task of unknown length prints when it starts and when it ends.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A bar redrawn in place (a terminal).
    Bar,
    /// Plain lines to the writer the caller gives.
    Lines,
}

impl Mode {
    /// A bar when stdout is a terminal, plain lines otherwise.
    pub fn for_stdout() -> Self {
        if io::stdout().is_terminal() { Mode::Bar } else { Mode::Lines }
    }
}

/// A task of `total` steps (records, keys).
pub struct Counter {
    bar: Option<ProgressBar>,
    total: u64,
    what: String,
    /// Quarters of the total already printed as lines.
    quarters: u64,
}

impl Counter {
    /// A task of `total` steps of `what` ("keys acknowledged"); a bar draws on stdout.
    pub fn new(mode: Mode, total: u64, what: &str) -> Self {
        let bar = (mode == Mode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("   [{bar:30}] {pos:>9}/{len} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("#>."),
            );
            bar.set_message(what.to_owned());
            bar
        });
        Counter { bar, total, what: what.to_owned(), quarters: 0 }
    }

    /// `done` steps are done: the bar moves, or a line is printed to `out` for each
    /// quarter of the total crossed since the last call.
    pub fn set(&mut self, done: u64, out: &mut dyn Write) -> io::Result<()> {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return Ok(());
        }
        let quarter = (done.min(self.total) * 4).checked_div(self.total).unwrap_or(4);
        if quarter > self.quarters {
            self.quarters = quarter;
            writeln!(out, "   {done:>9} / {} {} ({}%)", self.total, self.what, quarter * 25)?;
        }
        Ok(())
    }

    /// Prints `line` to `out` without tearing the bar (it is drawn again below it).
    pub fn say(&self, line: &str, out: &mut dyn Write) -> io::Result<()> {
        match &self.bar {
            Some(bar) => bar.suspend(|| writeln!(out, "{line}")),
            None => writeln!(out, "{line}"),
        }
    }

    /// The task ended: the bar is cleared; the caller prints the outcome (plain lines
    /// need no last one: the outcome says it).
    pub fn finish(mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A task of unknown length: a spinner with the elapsed time, or a line when it
/// starts and one when it ends.
pub struct Spinner {
    bar: Option<ProgressBar>,
    what: String,
    started: Instant,
}

impl Spinner {
    /// Starts showing `what` ("recovering the store from its files"); a spinner draws
    /// on stderr (a node's stdout stays for its own output).
    pub fn start(mode: Mode, what: &str, out: &mut dyn Write) -> io::Result<Self> {
        let bar = match mode {
            Mode::Bar => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(what.to_owned());
                bar.enable_steady_tick(Duration::from_millis(120));
                Some(bar)
            }
            Mode::Lines => {
                writeln!(out, "{what} ...")?;
                None
            }
        };
        Ok(Spinner { bar, what: what.to_owned(), started: Instant::now() })
    }

    /// The task ended; `outcome` says how ("done", "failed: ...").
    pub fn finish(self, outcome: &str, out: &mut dyn Write) -> io::Result<()> {
        let secs = self.started.elapsed().as_secs_f64();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        writeln!(out, "{}: {outcome} in {secs:.1} s", self.what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_come_once_per_quarter() {
        let mut out = Vec::new();
        let mut c = Counter::new(Mode::Lines, 100, "keys acknowledged");
        for done in [0, 10, 24, 25, 26, 60, 99] {
            c.set(done, &mut out).unwrap();
        }
        c.finish();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "25 / 100 keys acknowledged (25%)",
                "60 / 100 keys acknowledged (50%)",
                "99 / 100 keys acknowledged (75%)",
            ]
        );
    }

    #[test]
    fn a_spinner_in_lines_mode_says_when_it_starts_and_ends() {
        let mut out = Vec::new();
        let s = Spinner::start(Mode::Lines, "recovering", &mut out).unwrap();
        s.finish("done", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("recovering ...\nrecovering: done in "), "{text}");
    }
}
