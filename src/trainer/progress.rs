//! What the trainer shows while it runs: a progress bar per epoch and lines on stdout.
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::RunningMetrics;

/// What the trainer prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A progress bar per epoch on stderr when it is a terminal, and one line per epoch on
    /// stdout.
    #[default]
    Auto,
    /// Only the line per epoch (for logs).
    Lines,
    /// Nothing.
    Silent,
}

impl ProgressMode {
    /// Prints `line` on stdout unless silent.
    pub(crate) fn say(self, line: &str) {
        if self != ProgressMode::Silent {
            println!("{line}");
        }
    }

    /// The bar of epoch `epoch` (1-based) of `epochs`, at batch `position` of `num_batches`;
    /// hidden unless [`ProgressMode::Auto`] and stderr is a terminal.
    pub(crate) fn epoch_bar(
        self,
        epoch: usize,
        epochs: usize,
        position: usize,
        num_batches: usize,
    ) -> ProgressBar {
        let show = self == ProgressMode::Auto && std::io::stderr().is_terminal();
        let target = if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(num_batches as u64), target);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        bar.set_position(position as u64);
        bar
    }
}

/// The bar's message for the epoch so far.
pub(crate) fn bar_message(m: &RunningMetrics) -> String {
    format!(
        "loss {:.4} acc {:.2}% {:.0} img/s",
        m.loss, m.acc, m.images_per_sec
    )
}
