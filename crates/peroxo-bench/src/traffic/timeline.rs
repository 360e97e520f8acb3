//! When each command of an open-loop run is due: command `i` at `i / rate` seconds after the
//! start, the ones due during the warm-up unmeasured. Nothing is stored per command.

use std::time::Duration;

/// Nanoseconds in a second.
const NANOS: u128 = 1_000_000_000;

/// The schedule of a run's commands in time.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    /// Commands per second.
    rate: u32,
    /// Commands in all (warm-up and measured).
    len: u32,
    /// The first command of the measured window (the ones before are warm-up).
    measured_from: u32,
}

impl Timeline {
    /// `rate` commands per second for `warmup` and then `duration`.
    pub(crate) fn new(rate: u32, warmup: Duration, duration: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(rate >= 1, "--rate must be at least 1 per second");
        anyhow::ensure!(!duration.is_zero(), "--duration must be longer than zero");
        let count = |span: Duration| (span.as_nanos() * u128::from(rate)).div_ceil(NANOS);
        let len = u32::try_from(count(warmup + duration))
            .ok()
            .filter(|len| *len < u32::MAX)
            .ok_or_else(|| anyhow::anyhow!("--rate × (--warmup + --duration) is too many"))?;
        let measured_from = u32::try_from(count(warmup)).unwrap_or(len);
        Ok(Self {
            rate,
            len,
            measured_from,
        })
    }

    /// The number of commands in the run.
    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    /// When command `i` is due, after the start of the run.
    pub(crate) fn due(&self, i: u32) -> Duration {
        let nanos = u128::from(i) * NANOS / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The number of commands in the measured window.
    pub(crate) fn measured_len(&self) -> u32 {
        self.len - self.measured_from
    }

    /// Whether command `i` belongs to the measured window (not the warm-up).
    pub(crate) fn is_measured(&self, i: u32) -> bool {
        i >= self.measured_from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_covers_warmup_and_duration_at_the_rate() {
        let timeline =
            Timeline::new(1_000, Duration::from_secs(1), Duration::from_secs(2)).unwrap();
        assert_eq!(timeline.len(), 3_000);
        assert!(!timeline.is_measured(999));
        assert!(timeline.is_measured(1_000));
        assert_eq!(timeline.measured_len(), 2_000);
        assert_eq!(timeline.due(0), Duration::ZERO);
        assert_eq!(timeline.due(1_500), Duration::from_millis(1_500));
    }

    #[test]
    fn a_slow_rate_still_schedules_the_whole_window() {
        let timeline = Timeline::new(3, Duration::ZERO, Duration::from_millis(1_100)).unwrap();
        assert_eq!(timeline.len(), 4, "3.3 commands round up");
        assert!(timeline.is_measured(0));
        assert!(Timeline::new(0, Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Timeline::new(1, Duration::ZERO, Duration::ZERO).is_err());
    }
}
