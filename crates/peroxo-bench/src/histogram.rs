//! Latency histograms: HDR histograms with microsecond resolution from 1 µs to 60 s, three
//! significant digits, and the summary every scenario reports (p50, p90, p99, p99.9, max).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The lowest latency a histogram tells apart, in microseconds.
const LOWEST_US: u64 = 1;
/// The highest latency a histogram records, in microseconds; longer ones count as this.
const HIGHEST_US: u64 = 60_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency distribution, in microseconds.
pub(super) struct Latency(Histogram<u64>);

impl Latency {
    pub(super) fn new() -> Self {
        let histogram = Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
            .expect("the bounds are valid constants");
        Self(histogram)
    }

    /// Records one latency (clamped to the histogram's range).
    pub(super) fn record(&mut self, latency: Duration) {
        self.record_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one latency given in microseconds (clamped to the histogram's range).
    pub(super) fn record_us(&mut self, micros: u64) {
        self.0
            .saturating_record(micros.clamp(LOWEST_US, HIGHEST_US));
    }

    /// Adds every sample of `other`.
    pub(super) fn merge(&mut self, other: &Latency) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// The percentiles the reports show.
    pub(super) fn summary(&self) -> LatencySummary {
        let h = &self.0;
        let empty = h.is_empty();
        let at = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
        LatencySummary {
            count: h.len(),
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: if empty { 0 } else { h.max() },
        }
    }
}

/// The percentiles of a latency distribution, in microseconds (0 when it is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(super) struct LatencySummary {
    pub(super) count: u64,
    pub(super) p50_us: u64,
    pub(super) p90_us: u64,
    pub(super) p99_us: u64,
    pub(super) p999_us: u64,
    pub(super) max_us: u64,
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n = {})",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.count
        )
    }
}

/// Microseconds shown as milliseconds, e.g. `1.234 ms`.
pub(super) fn ms(micros: u64) -> String {
    format!("{:.3} ms", micros as f64 / 1_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_samples() {
        let mut latency = Latency::new();
        for us in 1..=1_000 {
            latency.record_us(us);
        }
        let s = latency.summary();
        assert_eq!(s.count, 1_000);
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.max_us, 1_000);
    }

    #[test]
    fn out_of_range_latencies_are_clamped_and_empty_summaries_are_zero() {
        assert_eq!(Latency::new().summary().max_us, 0);
        let mut latency = Latency::new();
        latency.record(Duration::from_secs(3_600));
        latency.record_us(0);
        let s = latency.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_us >= HIGHEST_US && s.max_us < HIGHEST_US + HIGHEST_US / 500);
    }
}
