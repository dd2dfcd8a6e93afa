//! A token bucket for the account's shared RDS API budget, and the monotonic clock it and the
//! fleet describe cache run on.
//!
//! RDS throttles per account and Region (about 12 requests/s sustained, shared with consoles,
//! IaC and everything else), so the agent allows itself less and queues its own calls fairly:
//! each caller reserves the next token in arrival order and sleeps until it is due.
//!
//! Both [`RateLimiter`] and the fleet cache (`rds::cache`) are generic over [`MonotonicClock`]:
//! the agent runs them on tokio's clock ([`TokioClock`], the default type parameter), the
//! simulator on its virtual time, so the same code is what the simulator's faults exercise.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Monotonic time: how long since the clock's origin (never goes back), and a sleep. Not the
/// wall clock (`ports::Clock`): durations and deadlines only.
pub trait MonotonicClock: Send + Sync {
    /// Time elapsed since this clock's origin.
    fn now(&self) -> Duration;
    /// Waits `d` on this clock.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send;
}

/// Tokio's clock (paused and advanced by `tokio::time` in tests); its origin is its creation.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            origin: Instant::now(),
        }
    }
}

impl MonotonicClock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

#[derive(Debug)]
pub struct RateLimiter<C: MonotonicClock = TokioClock> {
    per_second: f64,
    burst: f64,
    clock: C,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was counted (`MonotonicClock::now`).
    at: Duration,
}

impl RateLimiter {
    /// `per_second` sustained, with bursts of up to `burst` calls, on tokio's clock.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self::with_clock(per_second, burst, TokioClock::default())
    }
}

impl<C: MonotonicClock> RateLimiter<C> {
    /// `per_second` sustained, with bursts of up to `burst` calls, on `clock`; starts full.
    pub fn with_clock(per_second: f64, burst: f64, clock: C) -> Self {
        let per_second = if per_second.is_finite() && per_second > 0.0 {
            per_second
        } else {
            1.0
        };
        let burst = burst.max(1.0);
        let at = clock.now();
        RateLimiter {
            per_second,
            burst,
            clock,
            state: Mutex::new(Bucket { tokens: burst, at }),
        }
    }

    /// Waits for the next call's turn.
    pub async fn acquire(&self) {
        let wait = {
            let mut b = self.state.lock().await;
            let now = self.clock.now();
            let refill = now.saturating_sub(b.at).as_secs_f64() * self.per_second;
            b.tokens = (b.tokens + refill).min(self.burst);
            b.at = now;
            b.tokens -= 1.0;
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / self.per_second)
            }
        };
        if !wait.is_zero() {
            self.clock.sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_beyond_the_burst_are_spread_at_the_rate() {
        let l = RateLimiter::new(50.0, 2.0);
        let start = Instant::now();
        for _ in 0..12 {
            l.acquire().await;
        }
        // 2 at once, then 10 more at 50/s.
        let took = start.elapsed().as_secs_f64();
        assert!((0.19..0.5).contains(&took), "took {took}");
    }
}
