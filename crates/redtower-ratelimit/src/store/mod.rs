//! Where counters live: the [`RateLimitStore`] trait, [`RedisStore`] and [`MemoryStore`].

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{Outcome, Policy, Result, Subject};

mod memory;
mod redis;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// A backend that checks several policies for one subject in one atomic step.
///
/// Implementations must evaluate every policy against the same instant, admit the request only
/// if every policy that is not in [shadow mode](Policy::shadow) admits it, and then consume
/// `cost` from every policy that admits it; a denied request consumes nothing anywhere
/// (all-or-nothing). Callers guarantee `1 <= cost <= capacity` of every policy and unique policy
/// names (the layer checks both when it is built).
///
/// The arithmetic is the one of [`MemoryStore`] (and of the Redis script, checked against it).
#[async_trait::async_trait]
pub trait RateLimitStore: fmt::Debug + Send + Sync + 'static {
    /// Checks and, if admitted, consumes.
    ///
    /// # Errors
    ///
    /// When the backend cannot answer (Redis down, slow, script error).
    async fn check(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Result<Decision>;

    /// The same check, answered without waiting, by a store that can (the in-process
    /// [`MemoryStore`]): the layer then needs no future of its own for the request. `None`, the
    /// default, means "call [`check`](Self::check)". A store returning `Some` must return what
    /// `check` would.
    fn try_check_now(
        &self,
        subject: &Subject,
        policies: &[Policy],
        cost: u32,
    ) -> Option<Result<Decision>> {
        let _ = (subject, policies, cost);
        None
    }

    /// Reads what `subject` has left under `policies` without consuming anything. Each
    /// policy's outcome says whether a request of one unit would be admitted now (and if not,
    /// when), the units left and the time until full, as they are now; the decision is
    /// admitted when a one-unit request would be.
    ///
    /// # Errors
    ///
    /// When the backend cannot answer; [`Error::Unsupported`](crate::Error::Unsupported) from
    /// a store that does not implement it (the default).
    async fn peek(&self, subject: &Subject, policies: &[Policy]) -> Result<Decision> {
        let _ = (subject, policies);
        Err(crate::Error::Unsupported("peek"))
    }

    /// Forgets `subject`'s counters of `policies`: the subject starts over with a full
    /// allowance (a support desk unlocking an account, a successful login clearing the
    /// failed-login limit).
    ///
    /// # Errors
    ///
    /// As [`peek`](Self::peek).
    async fn reset(&self, subject: &Subject, policies: &[Policy]) -> Result<()> {
        let _ = (subject, policies);
        Err(crate::Error::Unsupported("reset"))
    }

    /// Gives back the `cost` units an admitted request consumed (`decision` is the one
    /// [`check`](Self::check) returned for it). Atomic, never below a full allowance, in the
    /// request's own window (see the crate docs, "Counting by outcome"): a denied decision, or
    /// a policy that did not consume (a shadow policy that said no), gives nothing back.
    ///
    /// # Errors
    ///
    /// As [`peek`](Self::peek).
    async fn refund(&self, subject: &Subject, decision: &Decision, cost: u32) -> Result<()> {
        let _ = (subject, decision, cost);
        Err(crate::Error::Unsupported("refund"))
    }

    /// Takes one of at most `max` concurrent leases of `subject` named `name` (a
    /// [concurrency limit](crate::ConcurrencyLimitLayer)), held under `token` (unique per
    /// request) until [`release`](Self::release) or until `ttl` has passed (a crashed instance
    /// does not hold leases forever). Expired leases are dropped first. Returns whether the
    /// lease was taken and how many are held.
    ///
    /// # Errors
    ///
    /// As [`peek`](Self::peek).
    async fn acquire(
        &self,
        subject: &Subject,
        name: &'static str,
        max: u32,
        ttl: Duration,
        token: u64,
    ) -> Result<Acquired> {
        let _ = (subject, name, max, ttl, token);
        Err(crate::Error::Unsupported("acquire"))
    }

    /// Gives back the lease `token` of `subject` named `name`. Releasing a lease already gone
    /// (expired, released) is no error.
    ///
    /// # Errors
    ///
    /// As [`peek`](Self::peek).
    async fn release(&self, subject: &Subject, name: &'static str, token: u64) -> Result<()> {
        let _ = (subject, name, token);
        Err(crate::Error::Unsupported("release"))
    }

    /// Sets (or with `None`, removes) the per-subject limit of the
    /// [overridable](Policy::overridable) policy named `policy`: the subject's next check on
    /// any instance uses it (see [`RedisStore::set_override`]).
    ///
    /// # Errors
    ///
    /// As [`peek`](Self::peek).
    async fn set_override(
        &self,
        subject: &Subject,
        policy: &str,
        limit: Option<std::num::NonZeroU32>,
    ) -> Result<()> {
        let _ = (subject, policy, limit);
        Err(crate::Error::Unsupported("set_override"))
    }

    /// Whether the store's backend has ever been reached: `false` only while a freshly
    /// started process is still making its first connection (not an outage). The default,
    /// for stores with nothing to connect to, is `true`.
    ///
    /// The layer counts a store failure toward its [circuit breaker](crate::CircuitBreaker)
    /// only when this is `true` and the failure is an outage ([`Error::is_outage`](crate::Error::is_outage)).
    fn has_connected(&self) -> bool {
        true
    }

    /// Waits for the backend's first connection, bounded by the store's own timeout, and
    /// returns at once once it has been made (also while a later connection is down: that is
    /// an outage). The default returns at once.
    ///
    /// The layer awaits this before its short per-request
    /// [timeout](crate::RateLimitLayer::timeout) starts, so that the first requests of a fresh
    /// process are decided by the store instead of by the failure policy.
    ///
    /// # Errors
    ///
    /// When the first connection could not be made in time (the backend is unreachable).
    async fn first_connection(&self) -> Result<()> {
        Ok(())
    }

    /// How many connections the backend has made so far, reconnections included (see
    /// [`Redis::connections`](redtower_client::Redis::connections)). An open
    /// [circuit breaker](crate::CircuitBreaker) lets a probe through as soon as this moves,
    /// instead of waiting out its cool-down: the connection is back. The default, 0, never
    /// moves.
    fn connections(&self) -> u64 {
        0
    }
}

#[async_trait::async_trait]
impl<T: RateLimitStore + ?Sized> RateLimitStore for Arc<T> {
    async fn check(&self, subject: &Subject, policies: &[Policy], cost: u32) -> Result<Decision> {
        (**self).check(subject, policies, cost).await
    }

    fn try_check_now(
        &self,
        subject: &Subject,
        policies: &[Policy],
        cost: u32,
    ) -> Option<Result<Decision>> {
        (**self).try_check_now(subject, policies, cost)
    }

    async fn peek(&self, subject: &Subject, policies: &[Policy]) -> Result<Decision> {
        (**self).peek(subject, policies).await
    }

    async fn reset(&self, subject: &Subject, policies: &[Policy]) -> Result<()> {
        (**self).reset(subject, policies).await
    }

    async fn refund(&self, subject: &Subject, decision: &Decision, cost: u32) -> Result<()> {
        (**self).refund(subject, decision, cost).await
    }

    async fn acquire(
        &self,
        subject: &Subject,
        name: &'static str,
        max: u32,
        ttl: Duration,
        token: u64,
    ) -> Result<Acquired> {
        (**self).acquire(subject, name, max, ttl, token).await
    }

    async fn release(&self, subject: &Subject, name: &'static str, token: u64) -> Result<()> {
        (**self).release(subject, name, token).await
    }

    async fn set_override(
        &self,
        subject: &Subject,
        policy: &str,
        limit: Option<std::num::NonZeroU32>,
    ) -> Result<()> {
        (**self).set_override(subject, policy, limit).await
    }

    fn has_connected(&self) -> bool {
        (**self).has_connected()
    }

    async fn first_connection(&self) -> Result<()> {
        (**self).first_connection().await
    }

    fn connections(&self) -> u64 {
        (**self).connections()
    }
}

/// The answer of [`RateLimitStore::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// Whether the lease was taken.
    pub taken: bool,
    /// Leases of the subject held after the call (this one included when taken).
    pub held: u32,
}

/// The result of checking one request against its policies. Cheap to clone.
///
/// The layer inserts it into the request's extensions, so handlers can read it. It is absent
/// when no limit applied (skipped key, store down with [fail open](crate::FailurePolicy)), so
/// take it as an `Option`:
///
/// ```
/// use axum::Extension;
/// use redtower_ratelimit::Decision;
///
/// async fn handler(decision: Option<Extension<Decision>>) -> String {
///     match decision {
///         Some(Extension(d)) => format!("{} requests left", d.remaining().unwrap_or(0)),
///         None => "not limited".to_owned(),
///     }
/// }
/// # let _ = handler;
/// ```
#[derive(Debug, Clone)]
pub struct Decision {
    allowed: bool,
    policies: Arc<[PolicyDecision]>,
    at_us: u64,
}

/// One policy's part of a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyDecision {
    policy: Policy,
    outcome: Outcome,
}

impl PolicyDecision {
    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The policy's name.
    pub fn name(&self) -> &'static str {
        self.policy.name()
    }

    /// Whether this policy admitted the request (a shadow policy may say no without denying).
    pub fn allowed(&self) -> bool {
        self.outcome.allowed
    }

    /// Units left after this request.
    pub fn remaining(&self) -> u64 {
        self.outcome.remaining
    }

    /// Time until fully replenished (see [`Outcome::reset_us`]).
    pub fn reset(&self) -> Duration {
        Duration::from_micros(self.outcome.reset_us)
    }

    /// When this policy denied: the exact wait until the same request would be admitted.
    pub fn retry_after(&self) -> Option<Duration> {
        (!self.outcome.allowed).then(|| Duration::from_micros(self.outcome.retry_after_us))
    }

    /// The raw outcome.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }
}

impl Decision {
    /// Builds a decision from one outcome per policy, in order. The request is admitted when
    /// every policy not in shadow mode admits it.
    ///
    /// # Panics
    ///
    /// If the lengths differ (a store bug).
    pub fn new(policies: &[Policy], outcomes: impl IntoIterator<Item = Outcome>) -> Self {
        let list: Arc<[PolicyDecision]> = policies
            .iter()
            .zip(outcomes)
            .map(|(policy, outcome)| PolicyDecision {
                policy: *policy,
                outcome,
            })
            .collect();
        assert_eq!(list.len(), policies.len(), "one outcome per policy");
        Self::of(list, 0)
    }

    /// The decision of `list`: admitted when every policy not in shadow mode admits it.
    fn of(list: Arc<[PolicyDecision]>, at_us: u64) -> Self {
        let allowed = list
            .iter()
            .all(|d| d.outcome.allowed || d.policy.is_shadow());
        Self {
            allowed,
            policies: list,
            at_us,
        }
    }

    /// This decision with each policy's outcome replaced by `f` of it (same policies, same
    /// instant); admitted again by the same rule as [`new`](Self::new).
    pub(crate) fn map_outcomes(&self, mut f: impl FnMut(&Outcome) -> Outcome) -> Self {
        let list = self
            .policies
            .iter()
            .map(|d| PolicyDecision {
                policy: d.policy,
                outcome: f(&d.outcome),
            })
            .collect();
        Self::of(list, self.at_us)
    }

    /// Records the instant the store decided at, by its own clock (µs since the Unix epoch):
    /// a [refund](RateLimitStore::refund) finds the request's window from it. Stores set it;
    /// 0 (the default) means unknown.
    #[must_use]
    pub fn checked_at(mut self, micros: u64) -> Self {
        self.at_us = micros;
        self
    }

    /// The instant the store decided at, by its clock (µs since the Unix epoch; 0 when the
    /// store did not say).
    pub fn at_micros(&self) -> u64 {
        self.at_us
    }

    /// Whether the request is admitted.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Every policy's part, in the order the policies were given.
    pub fn policies(&self) -> &[PolicyDecision] {
        &self.policies
    }

    /// The part of the policy named `name`.
    pub fn get(&self, name: &str) -> Option<&PolicyDecision> {
        self.policies.iter().find(|d| d.name() == name)
    }

    /// The enforcing policies that denied the request.
    pub fn violated(&self) -> impl Iterator<Item = &PolicyDecision> {
        self.policies
            .iter()
            .filter(|d| !d.allowed() && !d.policy.is_shadow())
    }

    /// When denied: how long until the same request would be admitted by every policy (the
    /// longest exact wait among the policies that denied).
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed {
            return None;
        }
        self.violated()
            .filter_map(PolicyDecision::retry_after)
            .max()
    }

    /// The enforcing policy with the fewest units left (ties: the longest reset): what legacy
    /// single-policy headers show.
    pub fn most_restrictive(&self) -> Option<&PolicyDecision> {
        let enforcing = self.policies.iter().filter(|d| !d.policy.is_shadow());
        enforcing
            .min_by_key(|d| (d.allowed(), d.remaining(), std::cmp::Reverse(d.reset())))
            .or_else(|| self.policies.first())
    }

    /// The policies that consumed units for this request (what a refund gives back to): none
    /// when it was denied; otherwise every policy that admitted it.
    pub fn consumed(&self) -> impl Iterator<Item = &Policy> {
        let allowed = self.allowed;
        self.policies
            .iter()
            .filter(move |d| allowed && d.allowed())
            .map(PolicyDecision::policy)
    }

    /// Units left under the most restrictive policy.
    pub fn remaining(&self) -> Option<u64> {
        self.most_restrictive().map(PolicyDecision::remaining)
    }
}

/// A clock set by hand, for tests: a store built with one (`RedisStore::clock`,
/// `MemoryStore::clock`) reads time from it instead of Redis `TIME` or the Tokio clock.
/// Production code never needs it: public only with the `testing` feature. Cloning shares the
/// clock.
///
/// ```
/// use std::time::Duration;
/// use redtower_ratelimit::ManualClock;
///
/// let clock = ManualClock::at_micros(1_000_000);
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now_micros(), 2_500_000);
/// ```
#[derive(Clone, Default)]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub struct ManualClock(Arc<AtomicU64>);

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock")
            .field(&self.now_micros())
            .finish()
    }
}

#[cfg_attr(not(feature = "testing"), allow(dead_code, unreachable_pub))]
impl ManualClock {
    /// A clock at the current wall-clock time.
    pub fn new() -> Self {
        Self::at_micros(wall_clock_micros())
    }

    /// A clock at `micros` since the Unix epoch.
    pub fn at_micros(micros: u64) -> Self {
        Self(Arc::new(AtomicU64::new(micros)))
    }

    /// The time, µs since the Unix epoch.
    pub fn now_micros(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Sets the time (µs since the Unix epoch).
    pub fn set_micros(&self, micros: u64) {
        self.0.store(micros, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            u64::try_from(by.as_micros()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

pub(crate) fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
