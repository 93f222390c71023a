//! Counting what arrived: latency histograms, per-receiver delivery tallies, loss.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::scan::Stamp;

/// Microseconds since the Unix epoch: the clock of stamps and `ref`s. Sender and
/// receiver are this one process, so the wall clock is shared.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Events per second, 0 over an empty span.
pub fn per_sec(count: u64, span: Duration) -> f64 {
    let secs = span.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Largest latency recorded exactly; larger ones are clamped to it (an hour).
const MAX_US: u64 = 3_600_000_000;

/// A latency distribution in microseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds are valid"),
        }
    }
}

impl Latency {
    pub fn record(&mut self, us: u64) {
        self.hist.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so every value fits.
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The percentiles, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let h = &self.hist;
        Some(LatencySummary {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

/// Percentiles of a [`Latency`], in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// What one receiver saw of the publishers' messages.
///
/// The server keeps a room's order, so a publisher's messages reach a receiver in
/// sequence: a sequence number at or below the last one seen is a duplicate.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    last_seq: Vec<Option<u64>>,
    /// Distinct messages received.
    pub delivered: u64,
    pub duplicates: u64,
    /// Stamped messages from a publisher this run does not have.
    pub foreign: u64,
    pub latency: Latency,
    /// Wall clock (µs) of the latest delivery.
    pub last_us: u64,
}

impl Tally {
    pub fn new(publishers: usize) -> Tally {
        Tally {
            last_seq: vec![None; publishers],
            ..Tally::default()
        }
    }

    /// Counts one received message; `false` when it was not a new delivery.
    pub fn record(&mut self, stamp: Stamp, now_us: u64) -> bool {
        let Some(last) = self.last_seq.get_mut(stamp.publisher as usize) else {
            self.foreign += 1;
            return false;
        };
        if last.is_some_and(|l| stamp.seq <= l) {
            self.duplicates += 1;
            return false;
        }
        *last = Some(stamp.seq);
        self.delivered += 1;
        self.latency.record(now_us.saturating_sub(stamp.sent_us));
        self.last_us = self.last_us.max(now_us);
        true
    }

    /// Adds another receiver's counts (the per-publisher sequences stay this one's).
    pub fn merge(&mut self, other: &Tally) {
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
        self.latency.merge(&other.latency);
        self.last_us = self.last_us.max(other.last_us);
    }
}

/// Deliveries against what the room should have delivered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Loss {
    /// `sent × receivers`.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// `lost / expected`, 0 when nothing was expected.
    pub loss_ratio: f64,
}

impl Loss {
    /// `delivered` counts distinct messages, so a duplicate never hides a loss.
    pub fn account(sent: u64, receivers: u64, delivered: u64) -> Loss {
        let expected = sent * receivers;
        let lost = expected.saturating_sub(delivered);
        Loss {
            expected,
            delivered,
            lost,
            loss_ratio: if expected == 0 {
                0.0
            } else {
                lost as f64 / expected as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(publisher: u32, seq: u64, sent_us: u64) -> Stamp {
        Stamp {
            publisher,
            seq,
            sent_us,
        }
    }

    #[test]
    fn every_message_delivered_is_no_loss() {
        // 2 publishers send 10 each; 3 receivers get all of them 500 µs later.
        let mut total = Tally::new(2);
        for _ in 0..3 {
            let mut t = Tally::new(2);
            for seq in 0..10 {
                for p in 0..2 {
                    assert!(t.record(stamp(p, seq, 1_000 + seq), 1_500 + seq));
                }
            }
            total.merge(&t);
        }
        let loss = Loss::account(20, 3, total.delivered);
        assert_eq!(loss.expected, 60);
        assert_eq!(loss.delivered, 60);
        assert_eq!(loss.lost, 0);
        assert_eq!(loss.loss_ratio, 0.0);
        let s = total.latency.summary().unwrap();
        assert_eq!((s.count, s.min_us, s.max_us, s.p50_us), (60, 500, 500, 500));
        assert_eq!(total.last_us, 1_509);
    }

    #[test]
    fn missing_messages_are_lost_and_duplicates_do_not_hide_them() {
        let mut t = Tally::new(1);
        t.record(stamp(0, 0, 0), 10);
        t.record(stamp(0, 2, 0), 10); // 1 never came
        assert!(!t.record(stamp(0, 2, 0), 10)); // a duplicate of 2
        assert!(!t.record(stamp(0, 1, 0), 10)); // behind the sequence
        assert!(!t.record(stamp(5, 0, 0), 10)); // not one of ours
        assert_eq!((t.delivered, t.duplicates, t.foreign), (2, 2, 1));
        let loss = Loss::account(4, 1, t.delivered);
        assert_eq!(loss.lost, 2);
        assert_eq!(loss.loss_ratio, 0.5);
        assert_eq!(t.latency.count(), 2);
    }

    #[test]
    fn nothing_sent_is_nothing_lost() {
        let loss = Loss::account(0, 100, 0);
        assert_eq!((loss.expected, loss.lost, loss.loss_ratio), (0, 0, 0.0));
        assert_eq!(Tally::new(1).latency.summary(), None);
    }

    #[test]
    fn percentiles_follow_the_distribution() {
        // 1..=1000 ms: p50 is 500 ms, p99 990 ms, within HDR's 3 digits.
        let mut l = Latency::default();
        for ms in 1..=1000u64 {
            l.record(ms * 1000);
        }
        let s = l.summary().unwrap();
        let near = |got: u64, want: u64| got.abs_diff(want) <= want / 500;
        assert!(near(s.p50_us, 500_000), "{s:?}");
        assert!(near(s.p90_us, 900_000), "{s:?}");
        assert!(near(s.p99_us, 990_000), "{s:?}");
        assert!(near(s.max_us, 1_000_000), "{s:?}");
        assert!(near(s.min_us, 1_000), "{s:?}");
        assert_eq!(s.count, 1000);
    }

    #[test]
    fn a_receiver_clock_behind_the_sender_records_zero() {
        let mut t = Tally::new(1);
        t.record(stamp(0, 0, 2_000), 1_000);
        assert_eq!(t.latency.summary().unwrap().max_us, 0);
    }

    #[test]
    fn rates() {
        assert_eq!(per_sec(500, Duration::from_millis(250)), 2000.0);
        assert_eq!(per_sec(5, Duration::ZERO), 0.0);
    }
}
