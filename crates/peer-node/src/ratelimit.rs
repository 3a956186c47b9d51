//! A global token bucket for piece bytes (`--max-upload-rate`,
//! `--max-download-rate`), and the parsers of those flags' values and of
//! byte sizes such as `--max-store 10GiB`.
//!
//! One [`RateLimiter`] per direction is shared by every connection through an
//! `Arc`; a connection calls [`RateLimiter::acquire`] for a piece's bytes
//! before it writes (or after it reads) them.
//!
//! # Design
//! The bucket lives inside a [`tokio::sync::Mutex`], which grants the lock in
//! the order it was asked for. An acquirer takes the lock, and while the
//! bucket holds too few tokens it sleeps for exactly the deficit **with the
//! lock held**; only then does it take its tokens and release the lock. So
//! waiters are served strictly first come, first served: a connection asking
//! for a whole piece is never starved by others asking for small amounts, and
//! the one sleeping waiter is the only timer (no thundering herd of wake-ups).
//! Tokens are taken only after the wait, so dropping an `acquire` future
//! (a cancelled fetch, a closed connection) gives nothing away and leaves the
//! bucket consistent: `acquire` is cancel-safe.
//!
//! Tokens are counted in nano-bytes (bytes × 10⁹) so refills are exact integer
//! arithmetic at any rate, with no drift from rounding. Time is
//! [`tokio::time::Instant`], so tests run on paused time.

use std::fmt;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use wire_format::limits::PIECE_MAX;

/// Smallest burst capacity: one whole piece plus headroom, so a full piece
/// always fits in the bucket and never needs to go into debt.
pub const MIN_BURST_BYTES: u64 = PIECE_MAX as u64 + (64 << 10);

// Every connection's writer shares one limiter and holds its `acquire`
// future across awaits in a spawned task: the compiler checks that the
// limiter is `Send + Sync` and the future `Send` (nothing here runs).
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<RateLimiter>();
};
const _: fn(&RateLimiter) = |limiter| {
    fn sent<T: Send>(_: T) {}
    sent(limiter.acquire(1));
};

/// Most digits accepted after a decimal point in a rate or size (`1.125GiB`).
pub const MAX_FRACTION_DIGITS: usize = 3;

/// Nano-bytes per byte: token counts are kept in units of 10⁻⁹ bytes, so a
/// refill of `elapsed_ns × rate` is exact.
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A token-bucket rate limiter for piece bytes, shared by every connection.
///
/// Built with a rate in bytes per second (or unlimited). The bucket holds at
/// most [`burst_bytes`](Self::burst_bytes) — the larger of the rate and
/// [`MIN_BURST_BYTES`] — and starts full. Waiters are served in FIFO order
/// (see the module docs).
#[derive(Debug)]
pub struct RateLimiter {
    limit: Option<Limit>,
}

#[derive(Debug)]
struct Limit {
    /// Bytes per second, never zero; also nano-bytes per nanosecond.
    rate: i128,
    /// Bytes per second, as configured.
    rate_bytes: u64,
    /// Capacity in nano-bytes.
    capacity: i128,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Available nano-bytes; negative while in debt after an acquire larger
    /// than the capacity.
    tokens: i128,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: i128, capacity: i128) {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        let elapsed = i128::try_from(elapsed).unwrap_or(i128::MAX);
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(capacity);
        self.updated = now;
    }
}

impl RateLimiter {
    /// A limiter of `rate` bytes per second; `None` (or `Some(0)`, the flags'
    /// spelling of "no limit") never waits.
    pub fn new(rate: Option<u64>) -> Self {
        let limit = rate.filter(|&r| r != 0).map(|rate_bytes| {
            let capacity = i128::from(rate_bytes.max(MIN_BURST_BYTES)) * NANOS_PER_SEC;
            Limit {
                rate: i128::from(rate_bytes),
                rate_bytes,
                capacity,
                bucket: Mutex::new(Bucket {
                    tokens: capacity,
                    updated: Instant::now(),
                }),
            }
        });
        Self { limit }
    }

    /// A limiter that never waits.
    pub fn unlimited() -> Self {
        Self { limit: None }
    }

    /// The rate in bytes per second, `None` when unlimited.
    pub fn rate(&self) -> Option<u64> {
        self.limit.as_ref().map(|l| l.rate_bytes)
    }

    /// The bucket's capacity in bytes (the largest burst), `None` when
    /// unlimited.
    pub fn burst_bytes(&self) -> Option<u64> {
        self.rate().map(|r| r.max(MIN_BURST_BYTES))
    }

    /// Waits until `bytes` tokens are available, then takes them.
    ///
    /// Returns at once when unlimited (or for zero bytes). Otherwise waits
    /// behind every earlier caller (FIFO). A request larger than the burst
    /// capacity waits only for a full bucket and then goes into debt: the
    /// bucket goes negative by the excess, and later callers wait for the debt
    /// to be repaid, so the long-run rate still holds. Cancel-safe: tokens are
    /// taken only when the call completes.
    pub async fn acquire(&self, bytes: usize) {
        let Some(limit) = &self.limit else {
            return;
        };
        if bytes == 0 {
            return;
        }
        let wanted = i128::try_from(bytes)
            .unwrap_or(i128::MAX)
            .saturating_mul(NANOS_PER_SEC);
        let needed = wanted.min(limit.capacity);
        let mut bucket = limit.bucket.lock().await;
        loop {
            bucket.refill(Instant::now(), limit.rate, limit.capacity);
            let deficit = needed.saturating_sub(bucket.tokens);
            if deficit <= 0 {
                break;
            }
            // Ceiling division: sleeping a nanosecond short would only loop.
            let wait_ns = deficit.saturating_add(limit.rate - 1) / limit.rate;
            let wait_ns = u64::try_from(wait_ns).unwrap_or(u64::MAX);
            tokio::time::sleep(Duration::from_nanos(wait_ns)).await;
        }
        // Cannot underflow: tokens ≥ needed ≥ 0 here and wanted is at most
        // usize::MAX × 10⁹, far inside i128.
        bucket.tokens = bucket.tokens.saturating_sub(wanted);
    }
}

impl Default for RateLimiter {
    /// Unlimited.
    fn default() -> Self {
        Self::unlimited()
    }
}

/// What a value was being parsed as, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// A rate in bytes per second (`--max-upload-rate`).
    Rate,
    /// A size in bytes (`--max-store`).
    Size,
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rate => "rate",
            Self::Size => "size",
        })
    }
}

/// Why a rate or size did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateParseErrorKind {
    /// Nothing given.
    Empty,
    /// A minus sign.
    Negative,
    /// Not digits with an optional `.` fraction.
    InvalidNumber,
    /// More than [`MAX_FRACTION_DIGITS`] digits after the point.
    TooManyFractionDigits,
    /// A fraction of a byte (a fraction without a unit).
    FractionalBytes,
    /// A unit that is not one of the known suffixes.
    UnknownUnit(String),
    /// More than `u64::MAX` bytes.
    Overflow,
}

impl fmt::Display for RateParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the value is empty"),
            Self::Negative => f.write_str("negative values are not allowed"),
            Self::InvalidNumber => {
                f.write_str("expected digits with an optional fraction, such as 1.5MiB")
            }
            Self::TooManyFractionDigits => write!(
                f,
                "at most {MAX_FRACTION_DIGITS} digits are allowed after the decimal point"
            ),
            Self::FractionalBytes => {
                f.write_str("a fraction needs a unit such as K or MiB (bytes are whole)")
            }
            Self::UnknownUnit(unit) => write!(
                f,
                "unknown unit {unit:?}; use B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB or \
                 TiB (K = 1000, KiB = 1024; case does not matter)"
            ),
            Self::Overflow => write!(f, "too large (at most {} bytes)", u64::MAX),
        }
    }
}

/// A rate or size flag value that did not parse; its message names the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateParseError {
    input: String,
    quantity: Quantity,
    kind: RateParseErrorKind,
}

impl RateParseError {
    /// The text that did not parse.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What it was parsed as.
    pub fn quantity(&self) -> Quantity {
        self.quantity
    }

    /// Why it did not parse.
    pub fn kind(&self) -> &RateParseErrorKind {
        &self.kind
    }
}

impl fmt::Display for RateParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {:?}: {}",
            self.quantity, self.input, self.kind
        )?;
        if self.quantity == Quantity::Rate {
            f.write_str(
                " (a rate is bytes per second, such as 10MiB/s; 0 or `unlimited` means no limit)",
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for RateParseError {}

/// Parses a `--max-upload-rate` / `--max-download-rate` value into bytes per
/// second; `None` means unlimited.
///
/// Accepts `unlimited` or `0` (no limit), plain bytes (`1048576`), and a
/// number with a unit as [`parse_size`] does, optionally followed by `/s`
/// (`10MiB/s`, `500K`). Case does not matter.
pub fn parse_rate(s: &str) -> Result<Option<u64>, RateParseError> {
    let trimmed = s.trim();
    if trimmed.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let body = strip_suffix_ignore_case(trimmed, "/s").unwrap_or(trimmed);
    let bytes = parse_quantity(body).map_err(|kind| RateParseError {
        input: s.to_owned(),
        quantity: Quantity::Rate,
        kind,
    })?;
    Ok((bytes != 0).then_some(bytes))
}

/// Parses a size such as `--max-store 10GiB` into bytes.
///
/// A whole number of bytes, or a number (up to [`MAX_FRACTION_DIGITS`]
/// fraction digits) with a unit: `K`/`KB` = 1000, `KiB` = 1024, and likewise
/// `M`, `G`, `T`; `B` is bytes. Case does not matter and a space may separate
/// number and unit. A fraction is rounded down to whole bytes
/// (`1.1KiB` = 1126). Ranges (such as whether 0 makes sense) are the caller's
/// to check.
pub fn parse_size(s: &str) -> Result<u64, RateParseError> {
    parse_quantity(s).map_err(|kind| RateParseError {
        input: s.to_owned(),
        quantity: Quantity::Size,
        kind,
    })
}

fn strip_suffix_ignore_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let split = s.len().checked_sub(suffix.len())?;
    let (head, tail) = (s.get(..split)?, s.get(split..)?);
    tail.eq_ignore_ascii_case(suffix).then_some(head)
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    let unit = unit.to_ascii_lowercase();
    Some(match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return None,
    })
}

fn parse_digits(digits: &str) -> Result<u64, RateParseErrorKind> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RateParseErrorKind::InvalidNumber);
    }
    digits.bytes().try_fold(0u64, |acc, b| {
        acc.checked_mul(10)
            .and_then(|acc| acc.checked_add(u64::from(b - b'0')))
            .ok_or(RateParseErrorKind::Overflow)
    })
}

fn parse_quantity(s: &str) -> Result<u64, RateParseErrorKind> {
    let s = s.trim();
    if s.is_empty() {
        return Err(RateParseErrorKind::Empty);
    }
    if s.starts_with('-') {
        return Err(RateParseErrorKind::Negative);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(RateParseErrorKind::InvalidNumber);
    }
    let unit = unit.trim_start();
    let multiplier =
        unit_multiplier(unit).ok_or_else(|| RateParseErrorKind::UnknownUnit(unit.to_owned()))?;
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    let whole = parse_digits(whole)?;
    let mut bytes = whole
        .checked_mul(multiplier)
        .ok_or(RateParseErrorKind::Overflow)?;
    if let Some(fraction) = fraction {
        // Digits first, so "1.2.3" is a bad number rather than a long fraction.
        let numerator = parse_digits(fraction)?;
        if fraction.len() > MAX_FRACTION_DIGITS {
            return Err(RateParseErrorKind::TooManyFractionDigits);
        }
        if multiplier == 1 {
            return Err(RateParseErrorKind::FractionalBytes);
        }
        // At most 999 × 2⁴⁰: no overflow. The length is at most
        // MAX_FRACTION_DIGITS, so the power is small.
        let denominator = 10u64.pow(u32::try_from(fraction.len()).unwrap_or(u32::MAX));
        let part = numerator.saturating_mul(multiplier) / denominator;
        bytes = bytes
            .checked_add(part)
            .ok_or(RateParseErrorKind::Overflow)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn burst_is_at_least_one_piece_plus_headroom() {
        assert_eq!(MIN_BURST_BYTES, (1 << 20) + (64 << 10));
        let slow = RateLimiter::new(Some(1000));
        assert_eq!(slow.burst_bytes(), Some(MIN_BURST_BYTES));
        let fast = RateLimiter::new(Some(10 << 20));
        assert_eq!(fast.burst_bytes(), Some(10 << 20));
        assert_eq!(RateLimiter::unlimited().burst_bytes(), None);
        assert_eq!(RateLimiter::new(Some(0)).rate(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn one_mib_per_second_paces_after_the_initial_burst() {
        let limiter = RateLimiter::new(Some(1 << 20));
        let start = Instant::now();
        limiter.acquire(MIB).await;
        // The full bucket covers the first piece.
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire(MIB).await;
        limiter.acquire(MIB).await;
        // Two more MiB at 1 MiB/s, minus the 64 KiB of headroom left over:
        // 2 s − 1/16 s. Timers fire on millisecond ticks, so allow a few.
        let elapsed = start.elapsed();
        let exact = Duration::from_millis(1937) + Duration::from_micros(500);
        assert!(elapsed >= exact, "{elapsed:?}");
        assert!(elapsed <= exact + Duration::from_millis(3), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_up_to_the_burst_only() {
        let limiter = RateLimiter::new(Some(1 << 20));
        limiter.acquire(MIB).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        // A minute idle refills the bucket, but only to its capacity.
        let burst = usize::try_from(MIN_BURST_BYTES).unwrap();
        limiter.acquire(burst).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire(1 << 10).await;
        let elapsed = start.elapsed();
        let exact = Duration::from_micros(976) + Duration::from_nanos(563);
        assert!(elapsed >= exact, "{elapsed:?}");
        assert!(elapsed <= exact + Duration::from_millis(2), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn larger_than_burst_goes_into_debt() {
        let limiter = RateLimiter::new(Some(1 << 20));
        let start = Instant::now();
        // A full bucket lets 3 MiB through at once…
        limiter.acquire(3 * MIB).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // …and the next byte waits for the debt: 3 MiB − 1 MiB − 64 KiB.
        limiter.acquire(1).await;
        let elapsed = start.elapsed();
        let debt = Duration::from_millis(1937) + Duration::from_micros(500);
        assert!(elapsed >= debt, "{elapsed:?}");
        assert!(elapsed <= debt + Duration::from_millis(2), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        for limiter in [RateLimiter::unlimited(), RateLimiter::new(None)] {
            let start = Instant::now();
            for _ in 0..100 {
                limiter.acquire(usize::MAX).await;
            }
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
        let zero = RateLimiter::new(Some(0));
        let start = Instant::now();
        zero.acquire(100 * MIB).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_bytes_never_waits() {
        let limiter = RateLimiter::new(Some(1));
        limiter.acquire(2 * MIB).await;
        let start = Instant::now();
        limiter.acquire(0).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_first_come_first_served() {
        let limiter = Arc::new(RateLimiter::new(Some(1 << 20)));
        // Empty the bucket so everyone below has to wait.
        limiter
            .acquire(usize::try_from(MIN_BURST_BYTES).unwrap())
            .await;
        let order = Arc::new(StdMutex::new(Vec::new()));
        let start = Instant::now();
        let waiter = |name: &'static str, bytes: usize| {
            let limiter = Arc::clone(&limiter);
            let order = Arc::clone(&order);
            async move {
                limiter.acquire(bytes).await;
                order.lock().unwrap().push((name, start.elapsed()));
            }
        };
        // Polled in this order: the big request queues first, and the small
        // ones, though each would fit sooner, wait behind it.
        tokio::join!(
            waiter("big", MIB),
            waiter("small1", 1 << 10),
            waiter("small2", 1 << 10)
        );
        let order = order.lock().unwrap().clone();
        let names: Vec<_> = order.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["big", "small1", "small2"]);
        assert!(order[0].1 >= Duration::from_secs(1), "{order:?}");
        assert!(order[1].1 > order[0].1, "{order:?}");
        assert!(order[2].1 > order[1].1, "{order:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_takes_no_tokens() {
        let limiter = RateLimiter::new(Some(1 << 20));
        limiter
            .acquire(usize::try_from(MIN_BURST_BYTES).unwrap())
            .await;
        // Give up half-way through a one-second wait.
        let cancelled =
            tokio::time::timeout(Duration::from_millis(500), limiter.acquire(MIB)).await;
        assert!(cancelled.is_err());
        let start = Instant::now();
        // Half a MiB has refilled and nothing was taken: 512 KiB is ready.
        limiter.acquire(MIB / 2).await;
        assert!(
            start.elapsed() <= Duration::from_millis(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn parse_rate_accepts_units_and_unlimited() {
        let cases: &[(&str, Option<u64>)] = &[
            ("unlimited", None),
            ("UNLIMITED", None),
            ("0", None),
            ("0MiB/s", None),
            ("1048576", Some(1_048_576)),
            ("1", Some(1)),
            ("10MiB/s", Some(10 << 20)),
            ("10mib/S", Some(10 << 20)),
            ("10 MiB/s", Some(10 << 20)),
            ("500K", Some(500_000)),
            ("500kb", Some(500_000)),
            ("500KiB", Some(500 << 10)),
            ("2M", Some(2_000_000)),
            ("2MB/s", Some(2_000_000)),
            ("1G", Some(1_000_000_000)),
            ("1GiB", Some(1 << 30)),
            ("1.5MiB/s", Some(3 << 19)),
            ("100B/s", Some(100)),
            (" 7K ", Some(7000)),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_rate(input), Ok(*expected), "{input}");
        }
    }

    #[test]
    fn parse_size_accepts_every_unit() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1048576", 1 << 20),
            ("10GiB", 10 << 30),
            ("10gib", 10 << 30),
            ("10GB", 10_000_000_000),
            ("10g", 10_000_000_000),
            ("1k", 1000),
            ("1KiB", 1024),
            ("1m", 1_000_000),
            ("1MiB", 1 << 20),
            ("2T", 2_000_000_000_000),
            ("2TiB", 2 << 40),
            ("1.5K", 1500),
            ("1.125GiB", (1 << 30) + (1 << 27)),
            ("0.001K", 1),
            ("1.1KiB", 1126),
            ("007MiB", 7 << 20),
            // Exactly u64::MAX, with and without a unit.
            ("18446744073709551615", u64::MAX),
            ("18446744073709551.615K", u64::MAX),
            ("17179869183GiB", u64::MAX - ((1 << 30) - 1)),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_size(input), Ok(*expected), "{input}");
        }
    }

    fn size_error(input: &str) -> RateParseErrorKind {
        match parse_size(input) {
            Err(e) => {
                assert_eq!(e.input(), input);
                assert_eq!(e.quantity(), Quantity::Size);
                e.kind().clone()
            }
            Ok(v) => panic!("{input:?} parsed as {v}"),
        }
    }

    #[test]
    fn parse_size_rejects_bad_input() {
        use RateParseErrorKind as K;
        let cases: &[(&str, K)] = &[
            ("", K::Empty),
            ("   ", K::Empty),
            ("-1", K::Negative),
            ("-1MiB", K::Negative),
            ("+1", K::InvalidNumber),
            ("MiB", K::InvalidNumber),
            (".5K", K::InvalidNumber),
            ("1.K", K::InvalidNumber),
            ("1.2.3K", K::InvalidNumber),
            ("1.0001K", K::TooManyFractionDigits),
            ("1.5", K::FractionalBytes),
            ("1.5B", K::FractionalBytes),
            ("10QB", K::UnknownUnit("QB".into())),
            ("1e6", K::UnknownUnit("e6".into())),
            ("10MiB/s", K::UnknownUnit("MiB/s".into())),
            ("unlimited", K::InvalidNumber),
            // One past u64::MAX, in every way of getting there.
            ("18446744073709551616", K::Overflow),
            ("99999999999999999999999", K::Overflow),
            ("18446744073709551.616K", K::Overflow),
            ("17179869184GiB", K::Overflow),
        ];
        for (input, expected) in cases {
            assert_eq!(&size_error(input), expected, "{input}");
        }
    }

    #[test]
    fn parse_rate_rejects_bad_input_naming_it() {
        for input in [
            "-5",
            "fast",
            "10 MiB/h",
            "1.5",
            "/s",
            "18446744073709551616/s",
        ] {
            let err = parse_rate(input).unwrap_err();
            assert_eq!(err.input(), input);
            assert_eq!(err.quantity(), Quantity::Rate);
            let message = err.to_string();
            assert!(message.contains(&format!("{input:?}")), "{message}");
            assert!(message.starts_with("invalid rate"), "{message}");
        }
        let unknown = parse_rate("10QB/s").unwrap_err().to_string();
        assert!(unknown.contains("unknown unit \"QB\""), "{unknown}");
        assert!(unknown.contains("unlimited"), "{unknown}");
        let size = parse_size("-1").unwrap_err().to_string();
        assert_eq!(size, "invalid size \"-1\": negative values are not allowed");
    }
}
