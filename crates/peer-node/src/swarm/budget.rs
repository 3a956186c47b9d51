//! The dial rate (docs/PROTOCOL.md §4): a token bucket of new connects,
//! shared by the dialler and widening fetches.
//!
//! Plain data; uses only wire-format.

use std::time::{Duration, Instant};

use wire_format::limits::DIAL_RATE_PER_SEC;

/// Dials chosen and not yet taken up by the node: a second's worth, the
/// most the dial budget grants at once. A dial that finds the queue full is
/// given back to the table and its budget refunded.
pub const DIAL_QUEUE: usize = DIAL_RATE_PER_SEC as usize;

/// A token bucket of new connects: [`DIAL_RATE_PER_SEC`] a second, and at
/// most a second's worth at once. Kept as time credit: each connect costs
/// `1 s / DIAL_RATE_PER_SEC`, and credit accrues with time up to 1 s.
#[derive(Debug)]
pub(crate) struct DialBudget {
    credit: Duration,
    at: Instant,
}

/// What one connect costs in [`DialBudget`] credit.
const DIAL_COST: Duration = Duration::from_nanos(1_000_000_000 / DIAL_RATE_PER_SEC as u64);
/// The most credit a [`DialBudget`] holds: a second's worth of connects.
const DIAL_BURST: Duration = Duration::from_secs(1);

impl DialBudget {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            credit: DIAL_BURST,
            at: now,
        }
    }

    /// Takes up to `want` connects; returns how many were granted.
    pub(crate) fn take(&mut self, want: usize, now: Instant) -> usize {
        self.credit = (self.credit + now.saturating_duration_since(self.at)).min(DIAL_BURST);
        self.at = now;
        let affordable =
            usize::try_from(self.credit.as_nanos() / DIAL_COST.as_nanos()).unwrap_or(usize::MAX);
        let granted = want.min(affordable);
        self.credit -= DIAL_COST * u32::try_from(granted).unwrap_or(u32::MAX);
        granted
    }

    /// Gives back connects granted and not used.
    pub(crate) fn refund(&mut self, unused: usize) {
        let back = DIAL_COST.saturating_mul(u32::try_from(unused).unwrap_or(u32::MAX));
        self.credit = (self.credit + back).min(DIAL_BURST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dial_budget_grants_a_seconds_worth_at_once_then_the_rate() {
        let rate = DIAL_RATE_PER_SEC as usize;
        let t0 = Instant::now();
        let mut budget = DialBudget::new(t0);
        assert_eq!(budget.take(rate + 1, t0), rate, "a full bucket, no more");
        assert_eq!(budget.take(1, t0), 0, "empty");
        let one = Duration::from_secs(1) / DIAL_RATE_PER_SEC;
        assert_eq!(budget.take(5, t0 + one / 2), 0, "half a token is none");
        assert_eq!(budget.take(5, t0 + one), 1, "one token per 1/rate s");
        // A long pause refills a second's worth, never more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(budget.take(10 * rate, later), rate);
        // Unused grants come back, up to the cap.
        budget.refund(3);
        assert_eq!(budget.take(10 * rate, later), 3);
        budget.refund(10 * rate);
        assert_eq!(budget.take(10 * rate, later), rate);
    }
}
