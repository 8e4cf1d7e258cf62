//! Small single-threaded async helpers used on a shard.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::sync::OnceLock;
use std::task::{Poll, Waker};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wakes every task waiting on it. Lives on one shard (`!Send`).
#[derive(Debug, Default)]
pub struct LocalNotify {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl LocalNotify {
    /// Wakes all current waiters.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves at the next `notify_all` after this call.
    pub async fn notified(&self) {
        let start = self.generation.get();
        poll_fn(|cx| {
            if self.generation.get() != start {
                Poll::Ready(())
            } else {
                let mut waiters = self.waiters.borrow_mut();
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

fn epoch() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Monotonic milliseconds since the process started (the shards' `now`).
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Wall-clock unix seconds (for records and headers).
pub fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Wall-clock unix milliseconds (for spool records).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The monotonic time at which a wall-clock unix time (seconds) falls.
pub fn mono_ms_for_unix(unix_s: u64) -> u64 {
    let now_unix = unix_now_s();
    let now = now_ms();
    if unix_s <= now_unix {
        now
    } else {
        now.saturating_add((unix_s - now_unix) * 1000)
    }
}

/// The unix time (seconds) of a monotonic time.
pub fn unix_for_mono_ms(mono: u64) -> u64 {
    let now = now_ms();
    unix_now_s().saturating_add(mono.saturating_sub(now) / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_wakes_waiters_once() {
        let (rt, _) = crate::runtime::build_runtime(None).unwrap();
        rt.block_on(async {
            let n = std::rc::Rc::new(LocalNotify::default());
            let n2 = n.clone();
            let waiter = compio::runtime::spawn(async move {
                n2.notified().await;
                1
            });
            compio::time::sleep(std::time::Duration::from_millis(5)).await;
            n.notify_all();
            assert_eq!(waiter.await.unwrap(), 1);
        });
        assert!(mono_ms_for_unix(unix_now_s() + 10) >= now_ms() + 9_000);
    }
}
