//! Reconnect delays: doubling from a minimum to a maximum, with jitter so that many
//! relays restarting together do not reconnect in step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    /// The next delay: between half and all of the current step, which then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Back to the minimum, after a success.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let steps: Vec<_> = (0..5).map(|_| backoff.next_delay()).collect();
        let bounds = [100, 200, 400, 400, 400];
        for (delay, bound) in steps.iter().zip(bounds) {
            let bound = Duration::from_millis(bound);
            assert!(
                *delay >= bound / 2 && *delay <= bound,
                "{delay:?} outside {bound:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
