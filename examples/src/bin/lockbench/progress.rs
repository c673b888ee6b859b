//! Progress on stderr: an `indicatif` bar on a terminal, plain numbered lines otherwise (CI
//! logs, a redirected stderr), so that a log still says what ran and when.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The run's progress over a known number of steps.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    started: Instant,
}

impl Progress {
    /// `total` steps; a bar only when stderr is a terminal.
    pub fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "[lockbench] {elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            // A slow redraw: the bar's own thread must not compete with what is measured.
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// The next step begins.
    pub fn step(&mut self, message: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.done.saturating_sub(1));
                bar.set_message(message.to_owned());
            }
            None => eprintln!(
                "[lockbench] {:>5.1} s  {}/{}  {message}",
                self.started.elapsed().as_secs_f64(),
                self.done,
                self.total
            ),
        }
    }

    /// A line that stays (above the bar on a terminal).
    pub fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("[lockbench] {message}")),
            None => eprintln!("[lockbench] {message}"),
        }
    }

    /// Removes the bar; says how long the run took.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "[lockbench] done in {:.0} s",
            self.started.elapsed().as_secs_f64()
        );
    }
}
