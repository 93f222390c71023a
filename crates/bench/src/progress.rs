//! Progress bars on stderr, one per phase; hidden when asked or when stderr is not a
//! terminal, so `--json` output and CI logs stay clean.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How often bars redraw: rarely enough to cost nothing beside the server.
pub const TICK: Duration = Duration::from_millis(200);

/// A bar counting `len` items, e.g. connections opened.
pub fn counter(show: bool, len: u64, prefix: &'static str) -> ProgressBar {
    bar(
        show,
        len,
        prefix,
        "{prefix:>10} [{bar:30}] {pos}/{len} {msg}",
    )
}

/// A bar over a span of time; its position is milliseconds elapsed.
pub fn timer(show: bool, span: Duration, prefix: &'static str) -> ProgressBar {
    bar(
        show,
        span.as_millis() as u64,
        prefix,
        "{prefix:>10} [{bar:30}] {elapsed:>4} {msg}",
    )
}

fn bar(show: bool, len: u64, prefix: &'static str, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(template)
        .expect("static templates are valid")
        .progress_chars("=> ");
    let bar = ProgressBar::new(len).with_style(style).with_prefix(prefix);
    bar.enable_steady_tick(TICK);
    bar
}
