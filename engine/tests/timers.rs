//! The vendored glommio's timers (vendor/glommio-ng/PATCHES.md, patch 4):
//! the engine waits with `or(event, sleep(limit))`, which polls the sleep
//! again on every wake of its task. Each such poll must replace the timer's
//! registration, not add one: upstream left the earlier ones in the wheel
//! to wake the task for nothing at their deadline, and kept every reactor
//! pass scanning them.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use tessera_engine::run_local;

/// Polls `inner` once per poll of itself, waking its own task `extra`
/// times first so that `inner` is polled `extra + 1` times while pending.
struct RepollThenDrop<F> {
    inner: Pin<Box<F>>,
    extra: u32,
}

impl<F: Future> Future for RepollThenDrop<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        assert!(
            self.inner.as_mut().poll(cx).is_pending(),
            "the timer fired early"
        );
        if self.extra == 0 {
            return Poll::Ready(());
        }
        self.extra -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Counts its polls; pending until `until` fires.
struct CountPolls<F> {
    until: Pin<Box<F>>,
    polls: Rc<Cell<u32>>,
}

impl<F: Future> Future for CountPolls<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.polls.set(self.polls.get() + 1);
        self.until.as_mut().poll(cx).map(|_| ())
    }
}

#[test]
fn a_timer_polled_again_leaves_no_stale_wakeup_behind() {
    run_local(|| async {
        // Polled 5 times while pending, then dropped ~500 ms before its
        // deadline.
        RepollThenDrop {
            inner: Box::pin(glommio::timer::sleep(Duration::from_millis(500))),
            extra: 4,
        }
        .await;
        // The same task then waits past that deadline on something else;
        // nothing may wake it before its own timer.
        let polls = Rc::new(Cell::new(0));
        CountPolls {
            until: Box::pin(glommio::timer::sleep(Duration::from_millis(800))),
            polls: polls.clone(),
        }
        .await;
        assert_eq!(polls.get(), 2, "woken before its timer fired");
    });
}
