//! Per-connection message rate limit: a token bucket, plus a strike count that turns
//! persistent flooding into a disconnect.

use std::time::Instant;

/// Rejections within one [`STRIKE_WINDOW_SECS`] window past which a connection is
/// cut off, at least this many.
const MIN_STRIKES: u32 = 20;
const STRIKE_WINDOW_SECS: f64 = 10.0;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Answer `rate limit exceeded` and drop the message.
    Reject,
    /// Close the connection with 1008.
    Disconnect,
}

#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    strikes: u32,
    window_start: Option<Instant>,
}

impl RateLimiter {
    /// `per_sec == 0` turns the limit off.
    pub fn new(per_sec: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_sec: per_sec as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: None,
            strikes: 0,
            window_start: None,
        }
    }

    pub fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Verdict {
        if self.per_sec == 0.0 {
            return Verdict::Allow;
        }
        if let Some(last) = self.last {
            let refill = now.duration_since(last).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        match self.window_start {
            Some(start) if now.duration_since(start).as_secs_f64() < STRIKE_WINDOW_SECS => {
                self.strikes += 1
            }
            _ => {
                self.window_start = Some(now);
                self.strikes = 1;
            }
        }
        if self.strikes > MIN_STRIKES.max(self.burst as u32) {
            Verdict::Disconnect
        } else {
            Verdict::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn off_allows_everything() {
        let mut r = RateLimiter::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(r.check(), Verdict::Allow);
        }
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 5);
        for _ in 0..5 {
            assert_eq!(r.check_at(t0), Verdict::Allow);
        }
        assert_eq!(r.check_at(t0), Verdict::Reject);
        // 100 ms at 10/s refills one token.
        assert_eq!(r.check_at(t0 + Duration::from_millis(100)), Verdict::Allow);
        assert_eq!(r.check_at(t0 + Duration::from_millis(100)), Verdict::Reject);
    }

    #[test]
    fn persistent_flooding_disconnects() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 5);
        let verdicts: Vec<_> = (0..100).map(|_| r.check_at(t0)).collect();
        let first_cut = verdicts
            .iter()
            .position(|v| *v == Verdict::Disconnect)
            .unwrap();
        assert_eq!(first_cut, 5 + MIN_STRIKES as usize);
    }

    #[test]
    fn strikes_expire() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1, 1);
        r.check_at(t0);
        for i in 0..MIN_STRIKES {
            assert_eq!(r.check_at(t0), Verdict::Reject, "{i}");
        }
        // A new window starts the count again.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(r.check_at(later), Verdict::Allow);
        assert_eq!(r.check_at(later), Verdict::Reject);
    }
}
