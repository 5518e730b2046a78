//! A listener's `max_connections`: how many client connections are open, and room for another.
//!
//! It lives as long as the listener, across reloads: a reload that changes the limit changes
//! this one's maximum, so connections accepted before and after it count against the same
//! limit (a new semaphore per reload would let old and new together reach twice the limit).
//! A lowered limit closes nothing: accepting resumes once enough connections have ended.
//!
//! The accept loop waits for room ([`Limit::room`]) before it accepts, and takes its place
//! ([`Limit::take`]) after: a connection waiting in the kernel's backlog is not counted as
//! open. Each limit has one accept loop, so the room it waited for is still there.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::Notify;

/// Open connections against a maximum.
#[derive(Debug)]
pub struct Limit {
    open: AtomicUsize,
    max: AtomicUsize,
    /// A connection ended or the maximum changed.
    changed: Notify,
}

/// One open connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot(Arc<Limit>);

impl Limit {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(usize::try_from(max).unwrap_or(usize::MAX)),
            changed: Notify::new(),
        })
    }

    /// A reload's new maximum; connections already open stay.
    pub fn set_max(&self, max: u32) {
        self.max.store(
            usize::try_from(max).unwrap_or(usize::MAX),
            Ordering::Release,
        );
        self.changed.notify_waiters();
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Returns once fewer than the maximum are open.
    pub async fn room(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a slot freed in between still wakes it.
            changed.as_mut().enable();
            if self.open() < self.max() {
                return;
            }
            changed.await;
        }
    }

    /// Counts a connection open until the slot is dropped.
    pub fn take(self: &Arc<Self>) -> Slot {
        self.open.fetch_add(1, Ordering::AcqRel);
        Slot(Arc::clone(self))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn has_room(limit: &Limit) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(20), limit.room())
                .await
                .is_ok()
        })
    }

    #[test]
    fn the_maximum_counts_connections_from_before_and_after_a_change() {
        let limit = Limit::new(2);
        let a = limit.take();
        let _b = limit.take();
        assert_eq!(limit.open(), 2);
        assert!(!has_room(&limit), "full");
        limit.set_max(3);
        assert!(has_room(&limit), "raised");
        let _c = limit.take();
        limit.set_max(1);
        assert!(
            !has_room(&limit),
            "lowered below what is open: nothing closes"
        );
        drop(a);
        assert_eq!(limit.open(), 2);
        assert!(!has_room(&limit), "still over the new maximum");
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_the_waiting_accept_loop() {
        let limit = Limit::new(1);
        let slot = limit.take();
        let waiter = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.room().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(slot);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}

/// At most one event a second: a warning that a flood must not turn into a flood of log lines
/// (what it warns of is counted besides).
#[derive(Debug, Default)]
pub struct OncePerSecond {
    /// The second (since the Unix epoch, plus one: 0 is "never") of the last event allowed.
    last: std::sync::atomic::AtomicU64,
}

impl OncePerSecond {
    /// Whether an event may happen now (the first of this second).
    pub fn allow(&self) -> bool {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
            + 1;
        self.last.swap(second, Ordering::Relaxed) != second
    }
}
