//! History reads that may be expensive, kept off the async workers.
//!
//! A read with an exact subject touches one ring and stays where it is. A
//! wildcard read visits up to `history.max_subjects_per_read` subjects,
//! which takes long enough (milliseconds) to delay every connection sharing
//! the worker thread; it runs on the blocking pool instead.

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
