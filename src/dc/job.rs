//! [`Job`]: what a caller shares with a long operation (compress, decompress, verify) to see
//! its byte total and to stop it.
//!
//! The progress callbacks of those operations stay plain `Fn(u64)` (bytes done since the last
//! call); a caller that wants more passes a `Job`. The operation records the total its
//! progress calls will add up to as soon as it knows it (before the first call), and checks for cancellation at each
//! progress point and once more right before its output is committed, so a cancel from the
//! last progress call still counts. A cancelled operation returns [`DcError::Cancelled`]
//! after removing everything it wrote (the atomic output and scratch files are dropped
//! uncommitted).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{DcError, Result};

/// Shared between a long operation and its caller; clones share the same state.
#[derive(Clone, Debug, Default)]
pub struct Job(Arc<State>);

#[derive(Debug, Default)]
struct State {
    cancelled: AtomicBool,
    /// Total bytes the progress calls add up to, once known.
    total: Mutex<Option<u64>>,
}

impl Job {
    pub fn new() -> Job {
        Job::default()
    }

    /// Asks the operation to stop at its next progress point. Callable from any thread,
    /// including from inside the operation's progress callback.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// What the operation's progress calls add up to, once it has said (`None` before: a
    /// lossy compression first quantizes, and only then knows how many bytes it compresses).
    pub fn total(&self) -> Option<u64> {
        *self.lock_total()
    }

    /// Called by an operation when it knows its total. The first call wins: an operation
    /// made of others (all parts of a split model) records the sum before its parts would
    /// record their own.
    pub(crate) fn set_total(&self, total: u64) {
        self.lock_total().get_or_insert(total);
    }

    fn lock_total(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        // An Option<u64> cannot be left half-written by a panic elsewhere.
        self.0.total.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(DcError::Cancelled)` once [`Job::cancel`] was called.
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(DcError::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_cancellation_and_total() {
        let job = Job::new();
        let seen = job.clone();
        assert_eq!(seen.total(), None);
        assert!(seen.check().is_ok());
        job.set_total(0);
        assert_eq!(seen.total(), Some(0));
        job.set_total(42);
        assert_eq!(seen.total(), Some(0), "the first total recorded stays");
        job.cancel();
        assert!(seen.is_cancelled());
        assert!(matches!(seen.check(), Err(DcError::Cancelled)));
    }
}
