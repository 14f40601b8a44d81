//! The executor sleep handshake of the vendored glommio-ng
//! (`vendor/glommio-ng`, PATCHES.md item 2), modelled with loom.
//!
//! A shard about to sleep sets `should_notify`, then takes a last look at
//! its cross-core sources (mesh channels, foreign wakers, blocking-pool
//! results) and sleeps on its ring only if all are empty. A sender on
//! another core pushes into one of those sources, then clears
//! `should_notify` and, if it was set, writes the sleeper's eventfd. This is
//! Dekker's pattern: each side stores, then loads what the other stored.
//! Without a full barrier on both sides both loads can miss (a store-buffer
//! reordering), the sleeper sleeps on a non-empty queue and nothing wakes
//! it: a lost wakeup, i.e. a mesh request that hangs.
//!
//! Upstream makes the sleeper issue `membarrier()` (an IPI to every core
//! running the process each time an executor sleeps; ~6% of the CPU of a
//! cross-shard transaction load). The patch uses a SeqCst fence on each
//! side instead. These models mirror `Reactor::react`'s sleep path and
//! `SleepNotifier::{prepare_to_sleep, notify}` (glommio itself cannot run
//! under loom): with both fences no interleaving loses a wakeup; with
//! either missing, loom finds one.

use loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// What the two cores share.
#[derive(Default)]
struct Handshake {
    /// A cross-core source (a mesh channel's pending count).
    queue: AtomicUsize,
    /// `SleepNotifier::should_notify`.
    should_notify: AtomicBool,
    /// The sleeper's eventfd: written means the ring wakes up.
    eventfd: AtomicBool,
}

/// Runs one sleep attempt against one send and checks that a sleeper
/// never sleeps on a message nobody will wake it for.
fn check(sleeper_fence: bool, sender_fence: bool) {
    loom::model(move || {
        let shared = Arc::new(Handshake::default());
        let sender = {
            let shared = shared.clone();
            thread::spawn(move || {
                // The channel push.
                shared.queue.fetch_add(1, Ordering::Release);
                // `SleepNotifier::notify`.
                if sender_fence {
                    fence(Ordering::SeqCst);
                }
                if shared
                    .should_notify
                    .compare_exchange(true, false, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    shared.eventfd.store(true, Ordering::Relaxed);
                }
            })
        };
        // `prepare_to_sleep`, the barrier, then the last look.
        shared.should_notify.store(true, Ordering::Relaxed);
        if sleeper_fence {
            fence(Ordering::SeqCst);
        }
        let sleeps = shared.queue.load(Ordering::Acquire) == 0;
        sender.join().unwrap();
        if sleeps {
            assert!(
                shared.eventfd.load(Ordering::Relaxed),
                "the sleeper slept on a pushed message and no one wrote its eventfd"
            );
        }
    });
}

#[test]
fn a_sleeping_executor_is_always_woken_for_a_message_sent_while_it_fell_asleep() {
    check(true, true);
}

#[test]
#[should_panic(expected = "no one wrote its eventfd")]
fn without_the_senders_fence_a_wakeup_can_be_lost() {
    check(true, false);
}

#[test]
#[should_panic(expected = "no one wrote its eventfd")]
fn without_the_sleepers_fence_a_wakeup_can_be_lost() {
    check(false, true);
}
