//! The reference model: the integer math of every [`Algorithm`], written once.
//!
//! [`MemoryStore`](crate::MemoryStore) runs it directly; the Redis Lua script implements the
//! same arithmetic and is checked against it (through the memory store) by a differential
//! property test. All times are integer microseconds since the Unix epoch; nothing is rounded
//! except where stated. [`Outcome`], a policy's answer, is public (re-exported at the crate
//! root); the rest is internal.

use crate::{Algorithm, Quota};

/// What is stored per policy and subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum State {
    /// GCRA: the theoretical arrival time (µs since the epoch).
    Gcra {
        /// Theoretical arrival time.
        tat: u64,
    },
    /// Fixed or sliding window: the window index (`now / period`), its count, and (sliding
    /// only) the previous window's count.
    Window {
        /// `now / period` when last written.
        window: u64,
        /// Count in that window.
        count: u64,
        /// Count in the window before it (sliding window; 0 for fixed).
        prev: u64,
    },
}

/// The answer for one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// Whether this policy admits the request.
    pub allowed: bool,
    /// Units left after this request (counting it if it is admitted).
    pub remaining: u64,
    /// Time until the policy is fully replenished if nothing else arrives (GCRA: bucket full;
    /// fixed window: end of the window; sliding window: until no counted request weighs).
    pub reset_us: u64,
    /// When denied: the exact wait until the same request would be admitted by this policy if
    /// nothing else arrives. 0 when allowed.
    pub retry_after_us: u64,
}

/// The state to store if the request is admitted, and its TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Update {
    /// The new state.
    pub(crate) state: State,
    /// How long the state matters; the key's TTL (rounded up to whole ms in Redis).
    pub(crate) ttl_us: u64,
}

/// Evaluates `quota` for a request of `cost` units at `now`, given the stored `state` (`None`
/// when there is none, or it has expired). Returns the outcome, and the update to store if the
/// request is admitted (callers store nothing for a denied request). A state of another
/// algorithm's shape counts as absent.
///
/// Never panics: for values past what a [validated](crate::Policy::validate) policy and a real
/// clock produce (a quota too large, a clock near `u64::MAX`, a corrupt state), the arithmetic
/// saturates at `u64::MAX` (answers are then unspecified, but total).
pub(crate) fn evaluate(
    quota: &Quota,
    state: Option<State>,
    now: u64,
    cost: u64,
) -> (Outcome, Update) {
    match quota.algorithm() {
        Algorithm::Gcra => gcra(quota, state, now, cost),
        Algorithm::FixedWindow => fixed(quota, state, now, cost),
        Algorithm::SlidingWindow => sliding(quota, state, now, cost),
    }
}

fn gcra(quota: &Quota, state: Option<State>, now: u64, cost: u64) -> (Outcome, Update) {
    let t = quota.emission_interval_us().max(1);
    let tau = u64::from(quota.capacity()).saturating_mul(t);
    let stored = match state {
        Some(State::Gcra { tat }) => tat,
        _ => 0,
    };
    let tat = stored.max(now);
    let new = tat.saturating_add(cost.saturating_mul(t));
    let outcome = if new - now <= tau {
        Outcome {
            allowed: true,
            remaining: (tau - (new - now)) / t,
            reset_us: new - now,
            retry_after_us: 0,
        }
    } else {
        Outcome {
            allowed: false,
            remaining: tau.saturating_sub(tat - now) / t,
            reset_us: tat - now,
            retry_after_us: (new - now) - tau,
        }
    };
    let update = Update {
        state: State::Gcra { tat: new },
        ttl_us: new - now,
    };
    (outcome, update)
}

fn fixed(quota: &Quota, state: Option<State>, now: u64, cost: u64) -> (Outcome, Update) {
    let p = quota.period_us().max(1);
    let limit = u64::from(quota.limit().get());
    let w = now / p;
    let count = match state {
        Some(State::Window { window, count, .. }) if window == w => count,
        _ => 0,
    };
    let allowed = count.saturating_add(cost) <= limit;
    let after = if allowed { count + cost } else { count };
    let end = window_end(w, 1, p, now);
    let outcome = Outcome {
        allowed,
        remaining: limit.saturating_sub(after),
        reset_us: end,
        retry_after_us: if allowed { 0 } else { end },
    };
    let update = Update {
        state: State::Window {
            window: w,
            count: count.saturating_add(cost),
            prev: 0,
        },
        ttl_us: end,
    };
    (outcome, update)
}

/// The smallest offset `e` in `0..=p` into a window such that `prev * (p - e) / p` (rounded
/// down) is at most `k`.
fn weight_drops_at(prev: u64, p: u64, k: u64) -> u64 {
    if prev <= k {
        return 0;
    }
    // prev * (p - e) < (k + 1) * p  <=>  p - e <= ((k + 1) * p - 1) / prev
    let m = ((u128::from(k) + 1) * u128::from(p) - 1) / u128::from(prev);
    p - u64::try_from(m).map_or(p, |m| m.min(p))
}

/// `(w + n) * p - now`: the time from `now` (in window `w`) to the end of window `w + n - 1`,
/// saturating.
fn window_end(w: u64, n: u64, p: u64, now: u64) -> u64 {
    w.saturating_add(n).saturating_mul(p).saturating_sub(now)
}

fn sliding(quota: &Quota, state: Option<State>, now: u64, cost: u64) -> (Outcome, Update) {
    let p = quota.period_us().max(1);
    let limit = u64::from(quota.limit().get());
    let w = now / p;
    let (cur, prev) = match state {
        Some(State::Window {
            window,
            count,
            prev,
        }) if window == w => (count, prev),
        Some(State::Window { window, count, .. }) if window.checked_add(1) == Some(w) => (0, count),
        _ => (0, 0),
    };
    let e = now - w * p;
    let weighted = (u128::from(prev) * u128::from(p - e) / u128::from(p)) as u64;
    let allowed = weighted.saturating_add(cur).saturating_add(cost) <= limit;
    let cur_after = if allowed { cur + cost } else { cur };
    let reset_us = if cur_after > 0 {
        window_end(w, 2, p, now)
    } else if prev > 0 {
        window_end(w, 1, p, now)
    } else {
        0
    };
    let retry_after_us = if allowed {
        0
    } else {
        // Later in this window, once the previous window's weight has dropped enough?
        let this_window = (limit >= cur.saturating_add(cost))
            .then(|| weight_drops_at(prev, p, limit - cur - cost))
            .filter(|&e2| e2 < p);
        match this_window {
            // w * p <= now.
            Some(e2) => (w * p).saturating_add(e2).saturating_sub(now),
            None => {
                // Next window: this window's count becomes the weighted one.
                let k2 = limit.saturating_sub(cost);
                let e3 = weight_drops_at(cur, p, k2);
                if e3 < p {
                    window_end(w, 1, p, now).saturating_add(e3)
                } else {
                    window_end(w, 2, p, now)
                }
            }
        }
    };
    let outcome = Outcome {
        allowed,
        remaining: limit.saturating_sub(weighted.saturating_add(cur_after)),
        reset_us,
        retry_after_us,
    };
    let update = Update {
        state: State::Window {
            window: w,
            count: cur.saturating_add(cost),
            prev,
        },
        ttl_us: window_end(w, 2, p, now),
    };
    (outcome, update)
}

/// What a request of one unit would be told at `now`, without consuming anything: `allowed`
/// and `retry_after_us` of a one-unit request, `remaining` and `reset_us` as they are now
/// (what a request of no cost would see).
pub(crate) fn peek(quota: &Quota, state: Option<State>, now: u64) -> Outcome {
    let (one, _) = evaluate(quota, state, now, 1);
    let (none, _) = evaluate(quota, state, now, 0);
    Outcome {
        allowed: one.allowed,
        remaining: none.remaining,
        reset_us: none.reset_us,
        retry_after_us: one.retry_after_us,
    }
}

/// Gives back `cost` units that a request admitted at `at` consumed, at `now` (`at <= now`).
/// Returns the state to store, `None` when there is nothing to give back (what the request
/// consumed no longer counts), and `Some(update)` with a TTL of 0 when the counter can go.
///
/// * GCRA: the arrival time moves back by `cost` emission intervals, never before `now` (a
///   full bucket stays full): exactly what the request still holds.
/// * Fixed window: the request's window's count drops by `cost` (never below 0), only while
///   that window is the current one; later it no longer counts anyway.
/// * Sliding window: the count of the request's window drops by `cost` (never below 0), while
///   that window is the current or the previous one (where it still weighs).
pub(crate) fn refund(
    quota: &Quota,
    state: Option<State>,
    now: u64,
    at: u64,
    cost: u64,
) -> Option<Update> {
    match (quota.algorithm(), state?) {
        (Algorithm::Gcra, State::Gcra { tat }) => {
            if tat <= now {
                return None;
            }
            let t = quota.emission_interval_us().max(1);
            let new = tat.saturating_sub(cost.saturating_mul(t)).max(now);
            Some(Update {
                state: State::Gcra { tat: new },
                ttl_us: new - now,
            })
        }
        (
            Algorithm::FixedWindow,
            State::Window {
                window,
                count,
                prev,
            },
        ) => {
            let p = quota.period_us().max(1);
            let w = now / p;
            (window == at / p && window == w).then(|| Update {
                state: State::Window {
                    window,
                    count: count.saturating_sub(cost),
                    prev,
                },
                ttl_us: window_end(w, 1, p, now),
            })
        }
        (
            Algorithm::SlidingWindow,
            State::Window {
                window,
                count,
                prev,
            },
        ) => {
            let p = quota.period_us().max(1);
            let (w, w0) = (now / p, at / p);
            let state = if window == w0 && (w == w0 || w == w0 + 1) {
                State::Window {
                    window,
                    count: count.saturating_sub(cost),
                    prev,
                }
            } else if window == w0 + 1 && w == window {
                State::Window {
                    window,
                    count,
                    prev: prev.saturating_sub(cost),
                }
            } else {
                return None;
            };
            Some(Update {
                state,
                ttl_us: window_end(window, 2, p, now),
            })
        }
        _ => None,
    }
}

/// A state as the Redis script stores it: GCRA `<tat>`, windows `<window> <count> <prev>`.
/// `None` for a value of another shape (what the script reads as no state).
pub(crate) fn parse_state(algorithm: Algorithm, raw: &[u8]) -> Option<State> {
    let text = std::str::from_utf8(raw).ok()?;
    match algorithm {
        Algorithm::Gcra => {
            let tat = text
                .parse::<u64>()
                .ok()
                .or_else(|| text.parse::<f64>().ok().map(|f| f as u64))?;
            Some(State::Gcra { tat })
        }
        Algorithm::FixedWindow | Algorithm::SlidingWindow => {
            let mut it = text.split(' ').map(|n| n.parse::<u64>().ok());
            let (window, count, prev) = (it.next()??, it.next()??, it.next()??);
            it.next().is_none().then_some(State::Window {
                window,
                count,
                prev,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nonzero;

    const T0: u64 = 1_700_000_000_000_000;

    /// Steps through time one µs at a time from `now` until the request is admitted.
    fn brute_retry(quota: &Quota, state: Option<State>, now: u64, cost: u64, step: u64) -> u64 {
        let mut t = now;
        loop {
            if evaluate(quota, state, t, cost).0.allowed {
                return t - now;
            }
            t += step;
        }
    }

    #[test]
    fn gcra_admits_its_burst_then_says_when_to_retry() {
        let quota = Quota::per_second(crate::nonzero!(2)); // GCRA, burst 2
        let now = 1_700_000_000_000_000;
        let (first, state) = evaluate(&quota, None, now, 1);
        assert!(first.allowed && first.remaining == 1);
        let (second, state) = evaluate(&quota, Some(state.state), now, 1);
        assert!(second.allowed && second.remaining == 0);
        let (third, _) = evaluate(&quota, Some(state.state), now, 1);
        assert!(!third.allowed);
        assert_eq!(third.retry_after_us, 500_000); // one token every 500 ms
    }

    #[test]
    fn sliding_retry_is_exact() {
        let quota = Quota::with_period(nonzero!(5), std::time::Duration::from_micros(1000))
            .unwrap()
            .sliding_window();
        let mut state = None;
        let mut now = T0 + 123;
        for i in 0..40u64 {
            let (o, u) = evaluate(&quota, state, now, 1 + i % 3);
            if o.allowed {
                state = Some(u.state);
            } else {
                let exact = brute_retry(&quota, state, now, 1 + i % 3, 1);
                assert_eq!(o.retry_after_us, exact, "step {i}");
            }
            now += 37 * (i % 7);
        }
    }

    #[test]
    fn gcra_refills_one_token_per_interval() {
        let quota = Quota::per_second(nonzero!(4)).burst(nonzero!(2));
        let (_, u) = evaluate(&quota, None, T0, 2);
        let (o, _) = evaluate(&quota, Some(u.state), T0, 1);
        assert!(!o.allowed);
        assert_eq!(o.retry_after_us, 250_000);
        assert_eq!(o.reset_us, 500_000);
        let (o, _) = evaluate(&quota, Some(u.state), T0 + 250_000, 1);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
    }

    fn hostile_quota() -> impl proptest::strategy::Strategy<Value = Quota> {
        use proptest::prelude::*;
        (
            any::<u32>(),
            prop_oneof![Just(1u64), Just(u64::MAX), any::<u64>()],
            any::<Option<u32>>(),
            0u8..3,
        )
            .prop_map(|(limit, period_us, burst, algo)| {
                let limit = std::num::NonZeroU32::new(limit).unwrap_or(std::num::NonZeroU32::MIN);
                // Past the 100 years `Quota` accepts: clamp there (its largest period).
                let period = std::time::Duration::from_micros(
                    period_us.clamp(1, 100 * 366 * 86_400 * 1_000_000),
                );
                let mut q = Quota::with_period(limit, period).unwrap();
                if let Some(b) = burst.and_then(std::num::NonZeroU32::new) {
                    q = q.burst(b);
                }
                match algo {
                    0 => q,
                    1 => q.fixed_window(),
                    _ => q.sliding_window(),
                }
            })
    }

    fn hostile_u64() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![
            Just(0),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            Just(1 << 53),
            any::<u64>()
        ]
    }

    proptest::proptest! {
        /// Whatever the quota (validated or not), the clock, the stored state (corrupt or not)
        /// and the cost, the model answers without panicking (debug builds check overflow),
        #[test]
        fn the_model_never_panics_on_hostile_values(
            quota in hostile_quota(),
            now in hostile_u64(),
            cost in hostile_u64(),
            tat in hostile_u64(),
            window in hostile_u64(),
            count in hostile_u64(),
            prev in hostile_u64(),
            gcra in proptest::bool::ANY,
        ) {
            let state = if gcra { State::Gcra { tat } } else { State::Window { window, count, prev } };
            for state in [None, Some(state)] {
                let (o, u) = evaluate(&quota, state, now, cost);
                let _ = std::time::Duration::from_micros(o.retry_after_us);
                let _ = std::time::Duration::from_micros(o.reset_us);
                let _ = now.saturating_add(u.ttl_us);
            }
        }
    }
}
