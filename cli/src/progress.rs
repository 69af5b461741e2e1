//! Progress bars for transfers: on a terminal only (stderr), never when piped.

use std::io::IsTerminal;

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use reposure_registry::push::Progress;

/// A bar for `total` bytes, hidden unless stderr is a terminal and `quiet` is off.
pub fn bar(total: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Shows on `bar` how many bytes passed.
pub fn reporter(bar: &ProgressBar) -> Progress {
    let bar = bar.clone();
    Arc::new(move |passed| bar.set_position(passed))
}
