//! A byte-rate limiter for background writes: after writing, sleep until
//! the bytes so far fit under the configured rate.

use std::time::{Duration, Instant};

pub struct RateLimiter {
    bytes_per_sec: u64,
    start: Instant,
    bytes: u64,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        assert!(bytes_per_sec > 0);
        RateLimiter {
            bytes_per_sec,
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// The earliest time the bytes consumed so far are allowed.
    fn allowed_at(&self) -> Instant {
        self.start + Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64)
    }

    pub async fn consume(&mut self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.bytes += bytes;
        let now = Instant::now();
        let at = self.allowed_at();
        if at > now {
            glommio::timer::sleep(at - now).await;
        }
    }
}
