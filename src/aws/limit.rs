//! A token bucket for the account's shared RDS API budget.
//!
//! RDS throttles per account and Region (about 12 requests/s sustained, shared with consoles,
//! IaC and everything else), so the agent allows itself less and queues its own calls fairly:
//! each caller reserves the next token in arrival order and sleeps until it is due.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_second` sustained, with bursts of up to `burst` calls.
    pub fn new(per_second: f64, burst: f64) -> Self {
        let per_second = if per_second.is_finite() && per_second > 0.0 {
            per_second
        } else {
            1.0
        };
        let burst = burst.max(1.0);
        RateLimiter {
            per_second,
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    /// Waits for the next call's turn.
    pub async fn acquire(&self) {
        let wait = {
            let mut b = self.state.lock().await;
            let now = Instant::now();
            let refill = now.duration_since(b.at).as_secs_f64() * self.per_second;
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
            tokio::time::sleep(wait).await;
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
