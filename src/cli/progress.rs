//! The command line's progress bar: the library's build reports ([`crate::progress`]) drawn on
//! stderr, and the stages a command runs itself (compiling a `.mlmodelc`) as a spinner.
//!
//! Quiet unless a person is watching: only when stderr is a terminal that can redraw a line
//! (`TERM` is not `dumb`) and the output is not machine-readable (`--json`); only once the
//! command has run longer than [`DELAY`], so a quick build prints exactly what it printed
//! before; and cleared when the command's work ends, so the summary line, warnings and errors
//! read as without it. The bar has no colours, so `NO_COLOR` has nothing to turn off.
//! `MLC_PROGRESS_DELAY_MS` sets the delay (tests set 0 to see a bar on a short build).

use crate::progress::{Observer, Progress, Stage, Unit};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a command runs before its bar appears.
pub const DELAY: Duration = Duration::from_secs(1);

/// Redraws of a shown bar per second, also when no report arrives (a long pass).
const TICK: Duration = Duration::from_millis(100);

/// One bar for a whole command, stage after stage. Made hidden; a timer thread shows it after
/// the delay unless [`Bar::clear`] came first.
pub struct Bar {
    bar: ProgressBar,
    /// What the current stage counts, for the style its total brings.
    unit: Mutex<Unit>,
    timer: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

impl Bar {
    /// A bar on stderr, or `None` where it must stay quiet (see the module doc); `machine`
    /// says the command's output is for a program.
    pub fn on_stderr(machine: bool) -> Option<Arc<Bar>> {
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if machine || dumb || !std::io::stderr().is_terminal() {
            return None;
        }
        let delay = std::env::var("MLC_PROGRESS_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(DELAY, Duration::from_millis);
        Some(Arc::new(Bar::delayed(delay)))
    }

    fn delayed(delay: Duration) -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(style(None, Unit::Tensors));
        let show = |bar: &ProgressBar| {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(TICK);
        };
        let timer = match delay.is_zero() {
            true => {
                show(&bar);
                None
            }
            false => {
                let (stop, stopped) = channel::<()>();
                let shown = bar.clone();
                let timer = std::thread::spawn(move || {
                    // Told to stop (or its sender gone) before the delay: never drawn.
                    if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(delay) {
                        show(&shown);
                    }
                });
                Some((stop, timer))
            }
        };
        Bar {
            bar,
            unit: Mutex::new(Unit::Tensors),
            timer: Mutex::new(timer),
        }
    }

    /// The observer a build's options take ([`crate::build::BuildOptions::progress`]).
    pub fn observer(bar: &Option<Arc<Bar>>) -> Observer {
        match bar {
            Some(b) => Observer::new(b.clone()),
            None => Observer::none(),
        }
    }

    /// A step the command runs itself, without counts: a spinner and `what`.
    pub fn spin(&self, what: impl Into<String>) {
        self.bar.set_style(style(None, Unit::Tensors));
        self.bar.unset_length();
        self.bar.set_position(0);
        self.bar.set_message(what.into());
    }

    /// Runs `compile` (writing `out`) under a spinner of its own, cleared before it returns.
    pub fn compiling<T>(out: &std::path::Path, machine: bool, compile: impl FnOnce() -> T) -> T {
        let bar = Bar::on_stderr(machine);
        if let Some(b) = &bar {
            b.spin(format!("compiling {}", out.display()));
        }
        let result = compile();
        if let Some(b) = &bar {
            b.clear();
        }
        result
    }

    /// Ends the bar: erased if it was drawn, never drawn if not yet. Idempotent.
    pub fn clear(&self) {
        let timer = match self.timer.lock() {
            Ok(mut t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some((stop, thread)) = timer {
            let _ = stop.send(());
            let _ = thread.join();
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Progress for Bar {
    fn begin(&self, stage: Stage) {
        if let Ok(mut u) = self.unit.lock() {
            *u = stage.unit();
        }
        // The message last: a frame drawn between these calls shows the stage before as a
        // spinner, not the new stage with the last stage's count.
        self.bar.set_style(style(None, stage.unit()));
        self.bar.unset_length();
        self.bar.set_position(0);
        self.bar.reset_eta();
        self.bar.set_message(stage.to_string());
    }

    fn total(&self, total: u64) {
        let unit = self.unit.lock().map_or(Unit::Tensors, |u| *u);
        // Styles are not drawn until the next change: the length.
        self.bar.set_style(style(Some(total), unit));
        self.bar.set_length(total);
    }

    fn advance(&self, done: u64) {
        self.bar.set_position(done);
    }
}

/// The bar's look for a stage: a bar where the total is known, a spinner where not; bytes as
/// sizes and rates, tensors as counts. Elapsed time is the command's.
fn style(total: Option<u64>, unit: Unit) -> ProgressStyle {
    // Within 80 columns: the bar takes what the terminal has left, a long message is cut.
    let template = match (total, unit) {
        (Some(_), Unit::Bytes) => {
            "{elapsed:>4} {spinner} {msg:<25} [{wide_bar}] {bytes}/{total_bytes}"
        }
        (Some(_), Unit::Tensors) => {
            "{elapsed:>4} {spinner} {msg:<25} [{wide_bar}] {pos}/{len} tensors"
        }
        (Some(_), Unit::Samples) => {
            "{elapsed:>4} {spinner} {msg:<25} [{wide_bar}] {pos}/{len} samples"
        }
        (None, Unit::Bytes) => "{elapsed:>4} {spinner} {msg} {bytes} ({bytes_per_sec})",
        (None, _) => "{elapsed:>4} {spinner} {wide_msg}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
        .tick_chars("|/-\\ ")
}
