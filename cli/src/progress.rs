//! Progress bars for transfers: on a terminal only (stderr), never when piped.

use std::io::IsTerminal;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reposure_surrogate::ByteStream;

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

/// Counts a stream's bytes on `bar` as they pass.
pub fn counted(stream: ByteStream, bar: ProgressBar) -> ByteStream {
    stream
        .inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                bar.inc(bytes.len() as u64);
            }
        })
        .boxed()
}
