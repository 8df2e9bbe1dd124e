//! A circuit breaker: after `failures_max` consecutive transport failures the breaker opens and
//! refuses calls at once for `open_for`; then it lets one probe call through (half-open). A
//! probe that succeeds closes the breaker; one that fails opens it again.
//!
//! The state is a small mutex-guarded struct: it is touched twice per processor call, which is
//! far cheaper than the call itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ConnectorError;

/// What the breaker currently does with calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused.
    Open,
    /// One probe call is allowed; its result decides.
    HalfOpen,
}

impl BreakerState {
    /// The state's name in metrics and health.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    consecutive_failures: u32,
    /// When the breaker opened; `None` while closed.
    opened_at: Option<Instant>,
    /// A half-open probe is in flight.
    probing: bool,
    /// Times the breaker has opened since start, for metrics.
    opened_total: u64,
}

/// A circuit breaker, shared by every call to one connector.
#[derive(Debug, Clone)]
pub struct Breaker {
    failures_max: u32,
    open_for: Duration,
    inner: Arc<Mutex<Inner>>,
}

/// Permission to make one call; report its result with [`Permit::record`].
#[derive(Debug)]
#[must_use = "record the call's result"]
pub struct Permit {
    breaker: Breaker,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    /// A closed breaker that opens after `failures_max` consecutive failures, for `open_for`.
    pub fn new(failures_max: u32, open_for: Duration) -> Breaker {
        assert!(failures_max > 0, "a breaker needs a failure threshold");
        Breaker {
            failures_max,
            open_for,
            inner: Arc::new(Mutex::new(Inner {
                consecutive_failures: 0,
                opened_at: None,
                probing: false,
                opened_total: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections below cannot panic; recover the data if one ever did.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        let inner = self.lock();
        match inner.opened_at {
            None => BreakerState::Closed,
            Some(at) if at.elapsed() < self.open_for => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker has opened.
    pub fn opened_total(&self) -> u64 {
        self.lock().opened_total
    }

    /// A permit for one call, or `CircuitOpen`.
    pub fn try_acquire(&self) -> Result<Permit, ConnectorError> {
        let mut inner = self.lock();
        let probe = match inner.opened_at {
            None => false,
            Some(at) if at.elapsed() < self.open_for => return Err(ConnectorError::CircuitOpen),
            Some(_) if inner.probing => return Err(ConnectorError::CircuitOpen),
            Some(_) => {
                inner.probing = true;
                true
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            recorded: false,
        })
    }

    fn record(&self, probe: bool, success: bool) {
        let mut inner = self.lock();
        if probe {
            inner.probing = false;
        }
        if success {
            inner.consecutive_failures = 0;
            inner.opened_at = None;
            return;
        }
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        if probe || inner.consecutive_failures >= self.failures_max {
            if probe || inner.opened_at.is_none() {
                inner.opened_total += 1;
            }
            inner.opened_at = Some(Instant::now());
        }
    }
}

impl Permit {
    /// Records the call's result: `true` for any answer from the processor, `false` for a
    /// transport failure.
    pub fn record(mut self, success: bool) {
        self.recorded = true;
        self.breaker.record(self.probe, success);
    }
}

impl Permit {
    /// Gives the permit back without a result: the call said nothing about the processor (it
    /// failed on Tandem's own side). A half-open probe slot is freed for the next call.
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for Permit {
    /// A call abandoned before its result (the caller was cancelled) frees a half-open probe
    /// slot without deciding anything.
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.lock().probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens after the threshold of consecutive failures (a success in between resets the
    /// count), refuses while open, lets exactly one probe through once the open period is
    /// over, reopens on a failed probe and closes on a good one.
    #[test]
    fn opens_probes_and_recovers() {
        let open_for = Duration::from_millis(40);
        let breaker = Breaker::new(3, open_for);
        breaker.try_acquire().unwrap().record(false);
        breaker.try_acquire().unwrap().record(false);
        breaker.try_acquire().unwrap().record(true);
        breaker.try_acquire().unwrap().record(false);
        breaker.try_acquire().unwrap().record(false);
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().unwrap().record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.opened_total(), 1);
        assert_eq!(
            breaker.try_acquire().unwrap_err(),
            ConnectorError::CircuitOpen
        );

        std::thread::sleep(open_for);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_err(), "only one probe at a time");
        probe.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.opened_total(), 2);

        std::thread::sleep(open_for);
        let abandoned = breaker.try_acquire().unwrap();
        drop(abandoned);
        breaker.try_acquire().unwrap().record(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().unwrap().record(true);
    }

    /// Released permits (calls that failed on Tandem's side) neither open the breaker nor
    /// reset its count of failures, and a released probe frees its slot.
    #[test]
    fn released_permits_decide_nothing() {
        let open_for = Duration::from_millis(40);
        let breaker = Breaker::new(2, open_for);
        for _ in 0..10 {
            breaker.try_acquire().unwrap().release();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().unwrap().record(false);
        breaker.try_acquire().unwrap().release();
        breaker.try_acquire().unwrap().record(false);
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "the release kept the count"
        );
        std::thread::sleep(open_for);
        breaker.try_acquire().unwrap().release();
        breaker.try_acquire().unwrap().record(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
