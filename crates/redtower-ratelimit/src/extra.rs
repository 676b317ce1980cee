//! Per-request choices beyond the policies: [`QuotaFor`] (a tier per request),
//! [`RefundWhen`] (counting by outcome), [`IpLists`] (allow and deny lists) and
//! [`RateLimitHandle`] (peek and reset from the application).

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use http::{StatusCode, request::Parts};
use ipnet::IpNet;

use crate::{Decision, Policy, RateLimitStore, Result, Subject};

/// Chooses, per request, which named tier of policies applies (see
/// [`RateLimitLayer::tier`](crate::RateLimitLayer::tier)). `None`, or a name that was not
/// declared, means the route's (or the layer's) own policies.
///
/// Implemented by every `Fn(&Parts) -> Option<&'static str>`; the usual source is a request
/// extension that an authentication layer set:
///
/// ```
/// use redtower_ratelimit::{MemoryStore, Policy, Quota, RateLimitLayer, nonzero};
///
/// #[derive(Clone, Copy)]
/// enum Tier { Free, Pro }
///
/// let layer = RateLimitLayer::new(MemoryStore::new(), Policy::new("hourly", Quota::per_hour(nonzero!(100))))
///     .tier("pro", [Policy::new("hourly", Quota::per_hour(nonzero!(10_000)))])
///     .quota_for(|parts: &http::request::Parts| match parts.extensions.get::<Tier>()? {
///         Tier::Pro => Some("pro"),
///         Tier::Free => None,
///     })
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
///
/// Policies of the same name in different tiers share one counter per subject, and the new
/// quota applies from the subject's next request. What carries over depends on the algorithm:
/// a window's count (2 used of 100 is 2 used of 10,000), GCRA's time debt (a bucket emptied
/// under one tier reads as empty under another, until it refills at the new rate). Give the
/// tiers' policies different names for separate counters (an upgrade then starts full).
pub trait QuotaFor: Send + Sync + 'static {
    /// The tier of this request.
    fn quota_for(&self, parts: &Parts) -> Option<&'static str>;
}

impl<F> QuotaFor for F
where
    F: Fn(&Parts) -> Option<&'static str> + Send + Sync + 'static,
{
    fn quota_for(&self, parts: &Parts) -> Option<&'static str> {
        self(parts)
    }
}

/// Which admitted requests give their units back once their response is known (counting by
/// outcome, express-rate-limit's `skipSuccessfulRequests` / `skipFailedRequests`). See the
/// crate docs, "Counting by outcome".
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum RefundWhen {
    /// Responses below 400 give their units back: only failures count (a login limit that
    /// counts failed attempts).
    Successful,
    /// Responses of 400 and above give their units back: only successes count.
    Failed,
    /// Responses whose status this function accepts give their units back.
    Status(fn(StatusCode) -> bool),
}

impl fmt::Debug for RefundWhen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Successful => f.write_str("Successful"),
            Self::Failed => f.write_str("Failed"),
            Self::Status(_) => f.write_str("Status(..)"),
        }
    }
}

impl RefundWhen {
    /// Whether a response with `status` gives its units back.
    pub fn applies(&self, status: StatusCode) -> bool {
        match self {
            Self::Successful => status.as_u16() < 400,
            Self::Failed => status.as_u16() >= 400,
            Self::Status(f) => f(status),
        }
    }
}

/// CIDR allow and deny lists, shared and reloadable at run time: requests from an allowed
/// network skip rate limiting; requests from a denied one are answered 403 (deny wins). Clones
/// share the lists, so the handle the application keeps reloads the layer's lists.
///
/// ```
/// use redtower_ratelimit::IpLists;
///
/// let lists = IpLists::new();
/// lists.set_allow(["10.0.0.0/8".parse().unwrap()]);
/// lists.set_deny(["203.0.113.0/24".parse().unwrap()]);
/// assert!(lists.is_allowed("10.1.2.3".parse().unwrap()));
/// assert!(lists.is_denied("203.0.113.9".parse().unwrap()));
/// lists.set_deny([]); // reloaded: takes effect on the next request
/// assert!(!lists.is_denied("203.0.113.9".parse().unwrap()));
/// ```
#[derive(Clone, Default)]
pub struct IpLists {
    inner: Arc<RwLock<Lists>>,
}

#[derive(Default)]
struct Lists {
    allow: Arc<[IpNet]>,
    deny: Arc<[IpNet]>,
}

impl fmt::Debug for IpLists {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = self.read();
        f.debug_struct("IpLists")
            .field("allow", &l.allow)
            .field("deny", &l.deny)
            .finish()
    }
}

/// What a list says about one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listed {
    Allowed,
    Denied,
    No,
}

impl IpLists {
    /// Empty lists.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Lists> {
        // A poisoned lock only means a thread panicked while swapping two `Arc`s.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Lists> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the allow-list.
    pub fn set_allow(&self, networks: impl IntoIterator<Item = IpNet>) {
        let list: Arc<[IpNet]> = networks.into_iter().map(|n| n.trunc()).collect();
        self.write().allow = list;
    }

    /// Replaces the deny-list.
    pub fn set_deny(&self, networks: impl IntoIterator<Item = IpNet>) {
        let list: Arc<[IpNet]> = networks.into_iter().map(|n| n.trunc()).collect();
        self.write().deny = list;
    }

    /// Whether `ip` is in the allow-list.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        contains(&self.read().allow, ip)
    }

    /// Whether `ip` is in the deny-list.
    pub fn is_denied(&self, ip: IpAddr) -> bool {
        contains(&self.read().deny, ip)
    }

    pub(crate) fn classify(&self, ip: IpAddr) -> Listed {
        let l = self.read();
        if contains(&l.deny, ip) {
            Listed::Denied
        } else if contains(&l.allow, ip) {
            Listed::Allowed
        } else {
            Listed::No
        }
    }
}

fn contains(list: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    list.iter().any(|n| n.contains(&ip))
}

/// The application's handle on a [`RateLimitLayer`](crate::RateLimitLayer)'s counters: read a
/// subject's remaining quota without consuming it, or reset it (a support desk, a successful
/// login). Cheap to clone. Take it once the layer is configured (a setter called later makes
/// a new layer that this handle does not see).
///
/// A reset also drops this instance's cached denials of the subject (see
/// [`denied_cache`](crate::RateLimitLayer::denied_cache)); another instance that denied the
/// subject answers from its own cache until the retry time it was told, then asks the store.
///
/// ```
/// use redtower_ratelimit::{MemoryStore, Quota, RateLimitLayer, Subject, nonzero};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_hour(nonzero!(5)));
/// let handle = layer.handle();
/// let alice = Subject::new("alice");
/// let d = handle.peek(&alice).await.unwrap();
/// assert_eq!(d.remaining(), Some(5));
/// handle.reset(&alice).await.unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimitHandle {
    pub(crate) store: Arc<dyn RateLimitStore>,
    pub(crate) policies: Arc<[Policy]>,
    pub(crate) routes: Arc<HashMap<String, Arc<[Policy]>>>,
    pub(crate) tiers: Arc<HashMap<&'static str, Arc<[Policy]>>>,
    /// The layer's shared state, to forget its local denials on a reset.
    pub(crate) shared: Arc<std::sync::OnceLock<Arc<crate::layer::Shared>>>,
}

impl fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("store", &self.store)
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl RateLimitHandle {
    /// The store.
    pub fn store(&self) -> &Arc<dyn RateLimitStore> {
        &self.store
    }

    /// What `subject` has left under the layer's own policies, consuming nothing (see
    /// [`RateLimitStore::peek`]).
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    pub async fn peek(&self, subject: &Subject) -> Result<Decision> {
        self.store.peek(subject, &self.policies).await
    }

    /// What `subject` has left under the policies of the route `path` (the route template
    /// given to [`route`](crate::RateLimitLayer::route)), or of the tier `path` (given to
    /// [`tier`](crate::RateLimitLayer::tier)); the layer's own policies for any other name.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    pub async fn peek_route(&self, path: &str, subject: &Subject) -> Result<Decision> {
        self.store.peek(subject, self.set(path)).await
    }

    /// Forgets `subject`'s counters of the layer's own policies.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    pub async fn reset(&self, subject: &Subject) -> Result<()> {
        self.store.reset(subject, &self.policies).await?;
        self.forget_denials(subject);
        Ok(())
    }

    /// Drops this instance's cached denials of `subject` (other instances hold theirs until
    /// the retry time they were told).
    fn forget_denials(&self, subject: &Subject) {
        if let Some(shared) = self.shared.get() {
            let sets = std::iter::once(&shared.policies)
                .chain(shared.routes.values())
                .chain(shared.tiers.values());
            for set in sets {
                shared
                    .denied
                    .remove(crate::service::cache_key(subject, set));
            }
        }
    }

    /// Forgets `subject`'s counters of the route's (or tier's) policies (see
    /// [`peek_route`](Self::peek_route)).
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    pub async fn reset_route(&self, path: &str, subject: &Subject) -> Result<()> {
        self.store.reset(subject, self.set(path)).await?;
        self.forget_denials(subject);
        Ok(())
    }

    fn set(&self, path: &str) -> &[Policy] {
        self.routes
            .get(path)
            .or_else(|| self.tiers.get(path))
            .unwrap_or(&self.policies)
    }
}
