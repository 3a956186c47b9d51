//! [`RefusalWarnings`]: when connection limits refuse sockets, the operator
//! hears about it once a while per limit, with what to raise. Silent
//! refusals leave an operator guessing why peers cannot connect; a line per
//! refused socket would let a flood fill the disk. Each refusal is still
//! counted and logged at debug level by its caller.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Least time between two warnings about the same limit.
pub const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The limits a program may name; each has its own warning clock, so a
/// per-host flood never hides that the global limit was reached too.
const LIMITS_MAX: usize = 4;

/// When each limit (by name) last warned.
#[derive(Debug, Default)]
pub struct RefusalWarnings {
    last: Mutex<Vec<(&'static str, Instant)>>,
}

impl RefusalWarnings {
    /// Whether a refusal by `limit` should be logged as a warning now: the
    /// first refusal by a limit does, then at most one per
    /// [`REFUSAL_WARNING_INTERVAL`].
    pub fn due(&self, limit: &'static str) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, at)) = last.iter_mut().find(|(name, _)| *name == limit) {
            if now.duration_since(*at) < REFUSAL_WARNING_INTERVAL {
                return false;
            }
            *at = now;
            return true;
        }
        // More limit names than a program has would be a caller's bug: stay
        // quiet rather than grow.
        if last.len() >= LIMITS_MAX {
            return false;
        }
        last.push((limit, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_limit_warns_at_first_then_once_per_interval() {
        let warnings = RefusalWarnings::default();
        assert!(warnings.due("max_connections"));
        assert!(!warnings.due("max_connections"));
        // Another limit has its own clock.
        assert!(warnings.due("per_ip"));
        tokio::time::advance(REFUSAL_WARNING_INTERVAL - Duration::from_millis(1)).await;
        assert!(!warnings.due("max_connections"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(warnings.due("max_connections"));
        assert!(warnings.due("per_ip"));
        assert!(!warnings.due("per_ip"));
    }

    #[tokio::test(start_paused = true)]
    async fn names_past_the_bound_are_never_kept() {
        let warnings = RefusalWarnings::default();
        let names = ["a", "b", "c", "d", "e"];
        for name in &names[..LIMITS_MAX] {
            assert!(warnings.due(name));
        }
        assert!(!warnings.due(names[LIMITS_MAX]));
        assert_eq!(warnings.last.lock().unwrap().len(), LIMITS_MAX);
    }
}
