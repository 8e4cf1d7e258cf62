//! A connection's read timeout without a timer per read.
//!
//! `compio::time::timeout` registers a timer and cancels it around every
//! read (a B-tree insert and remove in the runtime's timer table, plus a
//! randomised `select!`); with a read per SMTP round trip that was about 3%
//! of spate's CPU at 2 KB messages. [`ReadTimeout`] keeps one timer per
//! connection and re-arms it only when it fires early: each operation still
//! fails when it alone runs longer than its limit, but a busy connection
//! registers a timer about once per limit instead of once per read.

use std::future::Future;
use std::pin::{Pin, pin};
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};

type Sleep = Pin<Box<dyn Future<Output = ()>>>;

/// One connection's timer, shared by its successive operations.
pub struct ReadTimeout {
    timer: Option<(Instant, Sleep)>,
}

impl Default for ReadTimeout {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadTimeout {
    /// No timer yet: the first operation arms one.
    pub fn new() -> Self {
        Self { timer: None }
    }

    /// Runs `op`, giving up after `limit` from now (`None`: timed out; `op`
    /// is dropped, which cancels it).
    pub async fn run<F: Future>(&mut self, limit: Duration, op: F) -> Option<F::Output> {
        let deadline = Instant::now() + limit;
        // A timer set for later than this operation's deadline (a longer
        // limit before) must be replaced; an earlier one is re-armed when it
        // fires.
        if self.timer.as_ref().is_none_or(|(at, _)| *at > deadline) {
            self.arm(deadline);
        }
        let mut op = pin!(op);
        loop {
            let (_, sleep) = self.timer.as_mut()?;
            match select(op.as_mut(), sleep.as_mut()).await {
                Either::Left((out, _)) => return Some(out),
                Either::Right(((), _)) => {
                    if Instant::now() >= deadline {
                        self.timer = None;
                        return None;
                    }
                    // An older, earlier timer: this operation still has time.
                    self.arm(deadline);
                }
            }
        }
    }

    fn arm(&mut self, at: Instant) {
        self.timer = Some((at, Box::pin(compio::time::sleep_until(at))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> compio::runtime::Runtime {
        compio::runtime::Runtime::new().expect("runtime")
    }

    #[test]
    fn an_operation_that_finishes_in_time_returns_its_output() {
        rt().block_on(async {
            let mut t = ReadTimeout::new();
            for i in 0..3 {
                let out = t
                    .run(Duration::from_millis(200), async {
                        compio::time::sleep(Duration::from_millis(5)).await;
                        i
                    })
                    .await;
                assert_eq!(out, Some(i));
            }
        });
    }

    #[test]
    fn each_operation_gets_its_whole_limit_from_its_own_start() {
        rt().block_on(async {
            let mut t = ReadTimeout::new();
            // Arms the timer at +120 ms.
            assert_eq!(
                t.run(Duration::from_millis(120), async { 1 }).await,
                Some(1)
            );
            compio::time::sleep(Duration::from_millis(80)).await;
            // Starts at +80 ms with 120 ms: the old timer fires at +120 ms,
            // early for this one, which must still finish at about +150 ms.
            let started = Instant::now();
            let out = t
                .run(Duration::from_millis(120), async {
                    compio::time::sleep(Duration::from_millis(70)).await;
                    2
                })
                .await;
            assert_eq!(out, Some(2));
            assert!(started.elapsed() >= Duration::from_millis(70));
        });
    }

    #[test]
    fn an_operation_that_overruns_times_out_near_its_limit() {
        rt().block_on(async {
            let mut t = ReadTimeout::new();
            // A long limit first, then a short one: the short one must not
            // wait for the long timer.
            assert_eq!(t.run(Duration::from_secs(60), async { 0 }).await, Some(0));
            let started = Instant::now();
            let out = t
                .run(
                    Duration::from_millis(50),
                    compio::time::sleep(Duration::from_secs(5)),
                )
                .await;
            assert_eq!(out, None);
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(50), "{took:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
            // And the timer works again afterwards.
            assert_eq!(t.run(Duration::from_millis(50), async { 3 }).await, Some(3));
        });
    }
}
