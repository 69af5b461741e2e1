//! The request/answer pattern of the per-file actors.
//!
//! A request is queued synchronously, on the FUSE dispatch thread, so requests reach the
//! actor in the order the kernel sent them; the answer is awaited later, in a task.

use tokio::sync::{mpsc, oneshot};

use crate::errno::{FsError, FsResult};

/// Queues the request `make` builds around a reply channel, and returns its answer. A
/// closed actor (the file was released) answers EBADF.
pub fn ask<R, T, F>(
    requests: &mpsc::UnboundedSender<R>,
    make: F,
) -> impl Future<Output = FsResult<T>> + Send + 'static + use<R, T, F>
where
    T: Send + 'static,
    F: FnOnce(oneshot::Sender<FsResult<T>>) -> R + 'static,
{
    let (reply, answer) = oneshot::channel();
    let queued = requests.send(make(reply)).is_ok();
    async move {
        if !queued {
            return Err(FsError::BadHandle);
        }
        answer.await.unwrap_or(Err(FsError::BadHandle))
    }
}
