//! History reads that may be expensive, kept off the async workers.
//!
//! A read with an exact subject touches one ring and stays where it is. A
//! wildcard read visits up to `history.max_subjects_per_read` subjects,
//! which takes long enough (milliseconds) to delay every connection sharing
//! the worker thread; it runs on the blocking pool instead ([`read_history`],
//! for a request handler that can hand its data over), or in place with the
//! worker's other tasks moved away ([`read_history_in_place`], for a
//! connection's reader that holds its session by reference).

/// Runs `read` on the blocking pool when `wide` (a wildcard read), inline
/// otherwise.
pub async fn read_history<T: Send + 'static>(wide: bool, read: impl FnOnce() -> T + Send + 'static) -> T {
    if !wide {
        return read();
    }
    match tokio::task::spawn_blocking(read).await {
        Ok(value) => value,
        // The read panicked: let this request fail the way it would have
        // inline, without taking the worker down.
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Runs `read` in place; when `wide` on a multi-threaded runtime, first
/// tells the runtime this worker blocks, so that its other tasks move to
/// another worker meanwhile. (A single-threaded runtime, as in tests, has
/// nowhere to move them: the read runs inline.)
pub fn read_history_in_place<T>(wide: bool, read: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_threaded =
        Handle::try_current().is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
    if wide && multi_threaded {
        tokio::task::block_in_place(read)
    } else {
        read()
    }
}
