//! Two waits the connection's parts share: a lock that survives a panicked holder, and a wait
//! on a `Notify` that cannot miss a change.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

/// Locks `mutex`, also after a holder panicked: the values this module keeps behind a mutex
/// are changed whole under the lock, so a panic cannot leave one half-written.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until `answer` has one, re-checking each time `notify` wakes its waiters
/// (`notify_waiters`). The wait registers before it looks, so a change made between the look
/// and the wait still wakes it.
pub(super) async fn wait_for<T>(notify: &Notify, mut answer: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(answer) = answer() {
            return answer;
        }
        notified.await;
    }
}
