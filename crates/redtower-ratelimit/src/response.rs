//! What the layer writes: `RateLimit*` headers, `Retry-After`, problem+json bodies, and the
//! [`ResponseBody`] that carries either the inner body or ours.

use std::{
    fmt::Write as _,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{Decision, Policy};

/// Which rate limit headers to send on every limited response (allowed or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// IETF draft `RateLimit-Policy` and `RateLimit` (structured lists naming every policy).
    pub draft: bool,
    /// Legacy `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix time, seconds) for the most
    /// restrictive policy.
    pub legacy: bool,
}

impl Default for Headers {
    /// Draft headers only.
    fn default() -> Self {
        Self {
            draft: true,
            legacy: false,
        }
    }
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up, so a client that waits this long is never early.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// The `RateLimit-Policy` field of a set of policies: the same on every response, so the layer
/// computes it once.
pub(crate) fn policy_header(policies: &[Policy]) -> Option<HeaderValue> {
    if policies.is_empty() {
        return None;
    }
    let mut value = String::with_capacity(policies.len() * 32);
    for (i, p) in policies.iter().enumerate() {
        if i > 0 {
            value.push_str(", ");
        }
        let q = p.quota();
        let _ = write!(
            value,
            "\"{}\";q={};w={}",
            p.name(),
            q.limit(),
            ceil_secs(q.period()).max(1)
        );
    }
    HeaderValue::from_str(&value).ok()
}

/// Appends `n` in decimal (with `itoa`, without the formatting machinery: this runs on every
/// response).
fn push_u64(buf: &mut Scratch, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Where one response's header values are written side by side, on the stack unless they are
/// unusually long.
type Scratch = smallvec::SmallVec<[u8; 256]>;

/// Writes the rate limit headers for `decision` into `headers`, with the `RateLimit-Policy`
/// field (`policy`) already computed.
///
/// The values are written into one buffer and become fields that share one allocation (two
/// once there is more than one field): this runs on every response.
pub(crate) fn write_headers_with(
    headers: &mut HeaderMap,
    decision: &Decision,
    which: Headers,
    policy: Option<&HeaderValue>,
) {
    let draft = which.draft && !decision.policies().is_empty();
    let legacy = which.legacy.then(|| decision.most_restrictive()).flatten();
    if !draft && legacy.is_none() {
        return;
    }
    let mut buf = Scratch::new();
    // The fields, in order, and where each value ends in `buf`.
    let mut fields: [(&HeaderName, usize); 4] = [(&RATELIMIT, 0); 4];
    let mut n = 0;
    let mut end = |buf: &Scratch, name: &'static HeaderName| {
        fields[n] = (name, buf.len());
        n += 1;
    };
    if draft {
        for (i, d) in decision.policies().iter().enumerate() {
            if i > 0 {
                buf.extend_from_slice(b", ");
            }
            buf.push(b'"');
            buf.extend_from_slice(d.name().as_bytes());
            buf.extend_from_slice(b"\";r=");
            push_u64(&mut buf, d.remaining());
            buf.extend_from_slice(b";t=");
            push_u64(&mut buf, ceil_secs(d.reset()));
        }
        end(&buf, &RATELIMIT);
    }
    if let Some(d) = legacy {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        push_u64(&mut buf, u64::from(d.policy().quota().limit().get()));
        end(&buf, &X_LIMIT);
        push_u64(&mut buf, d.remaining());
        end(&buf, &X_REMAINING);
        push_u64(&mut buf, ceil_secs(now.saturating_add(d.reset())));
        end(&buf, &X_RESET);
    }
    if draft && let Some(v) = policy {
        headers.insert(RATELIMIT_POLICY.clone(), v.clone());
    }
    let all = Bytes::copy_from_slice(&buf);
    // Policy names are checked when the layer is built (`Segment::strict`) and the rest is
    // digits, so every value is a valid field.
    if n == 1 {
        if let Ok(v) = HeaderValue::from_maybe_shared(all) {
            headers.insert(fields[0].0.clone(), v);
        }
        return;
    }
    let mut start = 0;
    for &(name, end) in &fields[..n] {
        if let Ok(v) = HeaderValue::from_maybe_shared(all.slice(start..end)) {
            headers.insert(name.clone(), v);
        }
        start = end;
    }
}

/// The default 429 response: `application/problem+json` (RFC 9457) with the draft's
/// `quota-exceeded` problem type and the violated policies.
pub fn too_many_requests(decision: &Decision) -> Response<Bytes> {
    let violated: Vec<&str> = decision.violated().map(|d| d.name()).collect();
    let retry = decision.retry_after().map(ceil_secs);
    let body = serde_json::json!({
        "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "title": "Too Many Requests",
        "status": 429,
        "detail": match retry {
            Some(s) => format!("Rate limit exceeded; retry in {s} s."),
            None => "Rate limit exceeded.".to_owned(),
        },
        "violated-policies": violated,
    });
    problem(StatusCode::TOO_MANY_REQUESTS, body)
}

pub(crate) fn problem(status: StatusCode, body: serde_json::Value) -> Response<Bytes> {
    let mut res = Response::new(Bytes::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
}

pub(crate) fn simple_problem(status: StatusCode, detail: &str) -> Response<Bytes> {
    problem(
        status,
        serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
        }),
    )
}

pub(crate) fn set_retry_after(res: &mut Response<Bytes>, wait: Duration) {
    res.headers_mut()
        .insert(header::RETRY_AFTER, ceil_secs(wait).max(1).into());
}

pin_project! {
    /// The body of a rate limited service's response: the inner service's body, or the one the
    /// layer wrote (429, 503, ...).
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Inner { .. } => "ResponseBody::Inner",
            Kind::Full { .. } => "ResponseBody::Full",
        })
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderMap;

    use super::{Headers, policy_header, write_headers_with};
    use crate::{Decision, Policy};

    /// The headers for `decision`, computing `RateLimit-Policy` too.
    fn write_headers(headers: &mut HeaderMap, decision: &Decision, which: Headers) {
        let policy = which.draft.then(|| {
            let list: Vec<Policy> = decision.policies().iter().map(|d| *d.policy()).collect();
            policy_header(&list)
        });
        write_headers_with(headers, decision, which, policy.flatten().as_ref());
    }

    #[test]
    fn push_u64_writes_decimal() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            let mut s = super::Scratch::from_slice(b"x");
            super::push_u64(&mut s, n);
            assert_eq!(s.as_slice(), format!("x{n}").as_bytes());
        }
    }

    proptest::proptest! {
        /// Headers, `Retry-After` and the 429 body from any outcome a store can return (a
        /// custom store included: `Outcome` is public) never panic.
        #[test]
        fn responses_from_hostile_outcomes_never_panic(
            remaining in proptest::prelude::any::<u64>(),
            reset_us in proptest::prop_oneof![proptest::strategy::Just(u64::MAX), proptest::prelude::any::<u64>()],
            retry_after_us in proptest::prop_oneof![proptest::strategy::Just(u64::MAX), proptest::prelude::any::<u64>()],
            allowed in proptest::bool::ANY,
        ) {
            use crate::{Quota, Outcome, nonzero};
            let p = [Policy::new("p", Quota::per_hour(nonzero!(1)))];
            let d = Decision::new(&p, [Outcome { allowed, remaining, reset_us, retry_after_us }]);
            let mut headers = http::HeaderMap::new();
            write_headers(&mut headers, &d, Headers { draft: true, legacy: true });
            proptest::prop_assert!(headers.contains_key("ratelimit"));
            let mut res = super::too_many_requests(&d);
            if let Some(wait) = d.retry_after() {
                super::set_retry_after(&mut res, wait);
                let secs: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                // Rounded up: a retry at that time succeeds.
                proptest::prop_assert!(u128::from(secs) * 1_000_000 >= u128::from(retry_after_us));
            }
        }
    }

    #[test]
    fn ceil_secs_saturates() {
        assert_eq!(super::ceil_secs(Duration::MAX), u64::MAX);
        assert_eq!(super::ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(super::ceil_secs(Duration::from_secs(2)), 2);
    }
}
