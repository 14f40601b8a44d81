//! Hybrid logical clock. A timestamp is `physical_ms << 22 | logical << 8 | node`:
//! 41 bits of wall-clock milliseconds (good until 2039+), 14 bits of logical
//! counter (16k timestamps per ms per node) and 8 bits naming the node (the
//! shard), so timestamps from different shards never collide.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

pub const NODE_BITS: u32 = 8;
pub const LOGICAL_BITS: u32 = 14;
const PHYSICAL_SHIFT: u32 = NODE_BITS + LOGICAL_BITS;
const LOGICAL_MAX: u64 = (1 << LOGICAL_BITS) - 1;

/// A per-shard hybrid logical clock. Single-threaded by design.
///
/// Invariant: every value returned by `now` is strictly greater than every
/// value previously returned or passed to `observe`, and ends in `node`.
#[derive(Debug)]
pub struct HybridClock {
    node: u64,
    last: Cell<u64>,
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The smallest timestamp whose physical part is `ms`.
pub fn ts_from_ms(ms: u64) -> u64 {
    ms << PHYSICAL_SHIFT
}

/// The physical milliseconds of a timestamp.
pub fn ms_of_ts(ts: u64) -> u64 {
    ts >> PHYSICAL_SHIFT
}

impl HybridClock {
    pub fn new(node: u8) -> Self {
        HybridClock {
            node: node as u64,
            last: Cell::new(0),
        }
    }

    /// A fresh timestamp, greater than every one seen before.
    pub fn now(&self) -> u64 {
        self.now_at(wall_ms())
    }

    /// [`HybridClock::now`] from a wall-clock reading (`wall_ms`) taken
    /// since the event the timestamp is for: a server reads the clock once
    /// for a batch of requests, after they all arrived. The timestamp is
    /// then at or past the wall-clock time the event happened, as with a
    /// fresh reading.
    pub fn now_at(&self, wall_ms: u64) -> u64 {
        let last = self.last.get();
        let physical = ts_from_ms(wall_ms);
        let last_hl = last >> NODE_BITS;
        let candidate_hl = physical >> NODE_BITS;
        let hl = if candidate_hl > last_hl {
            candidate_hl
        } else if last_hl & LOGICAL_MAX == LOGICAL_MAX {
            // Logical counter exhausted within this ms: borrow the next ms.
            (last_hl | LOGICAL_MAX) + 1
        } else {
            last_hl + 1
        };
        let ts = (hl << NODE_BITS) | self.node;
        debug_assert!(ts > last);
        self.last.set(ts);
        ts
    }

    /// The clock's milliseconds now, without taking a timestamp: the wall
    /// clock's, or those of the last timestamp if the clock runs ahead of
    /// it (after observing another shard's, or a read ahead of it).
    pub fn now_ms(&self) -> u64 {
        wall_ms().max(ms_of_ts(self.last.get()))
    }

    /// Moves the clock past a timestamp seen elsewhere (a message, the WAL).
    pub fn observe(&self, ts: u64) {
        if ts > self.last.get() {
            // Keep our node bits: the next `now` is strictly above `ts`.
            self.last.set(ts | ((1 << NODE_BITS) - 1));
        }
    }

    /// The largest timestamp handed out or observed so far.
    pub fn last(&self) -> u64 {
        self.last.get()
    }

    pub fn node(&self) -> u8 {
        self.node as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_strictly_increasing_and_carry_the_node() {
        let clock = HybridClock::new(3);
        let mut prev = 0;
        for _ in 0..100_000 {
            let ts = clock.now();
            assert!(ts > prev);
            assert_eq!(ts & 0xff, 3);
            prev = ts;
        }
    }

    #[test]
    fn observe_moves_the_clock_past_a_remote_timestamp() {
        let clock = HybridClock::new(1);
        let far = ts_from_ms(wall_ms() + 60_000) | 7;
        clock.observe(far);
        let ts = clock.now();
        assert!(ts > far);
        assert_eq!(ts & 0xff, 1);
    }

    #[test]
    fn a_reading_shared_by_a_batch_gives_each_write_its_own_later_timestamp() {
        let clock = HybridClock::new(2);
        let reading = wall_ms();
        let first = clock.now_at(reading);
        assert_eq!(ms_of_ts(first), reading);
        // The batch's other writes: same reading, each a later timestamp.
        let mut prev = first;
        for _ in 0..100 {
            let ts = clock.now_at(reading);
            assert!(ts > prev);
            assert_eq!(ts & 0xff, 2);
            prev = ts;
        }
        // A later batch's reading moves the physical part on.
        let later = clock.now_at(reading + 5);
        assert_eq!(ms_of_ts(later), reading + 5);
        // A stale reading never takes the clock back.
        assert!(clock.now_at(reading - 1000) > later);
    }

    #[test]
    fn physical_part_tracks_wall_time() {
        let clock = HybridClock::new(0);
        let before = wall_ms();
        let ts = clock.now();
        assert!(ms_of_ts(ts) >= before && ms_of_ts(ts) <= wall_ms() + 1);
    }
}
