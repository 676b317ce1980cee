//! [`TraceContext`]: a W3C trace context (`traceparent`, `tracestate`) stored with a job or an
//! event, so the span that handles it later, in another task or process, joins the trace of
//! the span that produced it.
//!
//! The type itself has no dependencies: stores keep and load it as text
//! ([`encode`](TraceContext::encode) / [`decode`](TraceContext::decode)). With the
//! `opentelemetry` feature, `TraceContext::current` captures the current `tracing` span's
//! OpenTelemetry context through the W3C `TraceContextPropagator`, and
//! `TraceContext::set_parent_of` makes a span its child (both through
//! `tracing-opentelemetry`).
//!
//! Everything read back is checked again: a stored context comes from Redis, so a
//! `traceparent` that is not the W3C version-00 form is refused ([`decode`](TraceContext::decode)
//! answers `None`), and a `tracestate` over [`MAX_TRACESTATE_LEN`](TraceContext::MAX_TRACESTATE_LEN)
//! bytes or with bytes outside printable ASCII is dropped (the `traceparent` is kept). A bad
//! context never fails the job or event it came with.
//!
//! ```
//! use redtower_client::TraceContext;
//!
//! let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! let cx = TraceContext::new(tp, Some("rojo=00f067aa0ba902b7")).unwrap();
//! let text = cx.encode();
//! assert_eq!(text, format!("{tp};rojo=00f067aa0ba902b7"));
//! assert_eq!(TraceContext::decode(&text), Some(cx));
//!
//! assert!(TraceContext::new("00-not-a-trace", None).is_none());
//! let long = "k=".to_owned() + &"v".repeat(600);
//! assert_eq!(TraceContext::new(tp, Some(&long)).unwrap().tracestate(), None);
//! ```

use std::fmt;

/// A W3C trace context: a `traceparent` (version 00) and an optional `tracestate`, checked
/// and bounded (at most [`MAX_ENCODED_LEN`](Self::MAX_ENCODED_LEN) bytes encoded). See the
/// [module docs](self).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    traceparent: Box<str>,
    tracestate: Option<Box<str>>,
}

impl TraceContext {
    /// The length of a version-00 `traceparent`.
    pub const TRACEPARENT_LEN: usize = 55;
    /// The longest `tracestate` kept, in bytes (the W3C limit: 32 members, 512 bytes).
    pub const MAX_TRACESTATE_LEN: usize = 512;
    /// The longest [`encode`](Self::encode)d context, in bytes.
    pub const MAX_ENCODED_LEN: usize = Self::TRACEPARENT_LEN + 1 + Self::MAX_TRACESTATE_LEN;

    /// A context from its two headers. `None` when `traceparent` is not a valid version-00
    /// `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, lower case, ids not all zero). A
    /// `tracestate` that is empty, longer than
    /// [`MAX_TRACESTATE_LEN`](Self::MAX_TRACESTATE_LEN) or not printable ASCII is dropped.
    pub fn new(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        if !valid_traceparent(traceparent) {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| valid_tracestate(s))
            .map(Box::from);
        Some(Self {
            traceparent: Box::from(traceparent),
            tracestate,
        })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` header value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The context as one line of text: the `traceparent`, then `;` and the `tracestate` when
    /// there is one. It holds no newline, and its first `;` ends the `traceparent`.
    pub fn encode(&self) -> String {
        match &self.tracestate {
            Some(state) => format!("{};{state}", self.traceparent),
            None => self.traceparent.to_string(),
        }
    }

    /// Reads [`encode`](Self::encode)d text back. `None` when it is longer than
    /// [`MAX_ENCODED_LEN`](Self::MAX_ENCODED_LEN) or its `traceparent` is not valid; an
    /// invalid `tracestate` is dropped.
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() > Self::MAX_ENCODED_LEN {
            return None;
        }
        match text.split_once(';') {
            Some((parent, state)) => Self::new(parent, Some(state)),
            None => Self::new(text, None),
        }
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent)
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn valid_traceparent(s: &str) -> bool {
    if s.len() != TraceContext::TRACEPARENT_LEN {
        return false;
    }
    let mut parts = s.split('-');
    let (Some(version), Some(trace), Some(span), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    version == "00"
        && lower_hex(trace, 32)
        && lower_hex(span, 16)
        && lower_hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0')
}

fn valid_tracestate(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= TraceContext::MAX_TRACESTATE_LEN
        && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::{
        Context,
        propagation::{Extractor, Injector, TextMapPropagator},
        trace::TraceContextExt,
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    const TRACEPARENT: &str = "traceparent";
    const TRACESTATE: &str = "tracestate";

    /// The two headers the W3C propagator writes.
    #[derive(Default)]
    struct Carrier {
        traceparent: Option<String>,
        tracestate: Option<String>,
    }

    impl Injector for Carrier {
        fn set(&mut self, key: &str, value: String) {
            match key {
                TRACEPARENT => self.traceparent = Some(value),
                TRACESTATE => self.tracestate = Some(value),
                _ => {}
            }
        }
    }

    impl Extractor for &TraceContext {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                TRACEPARENT => Some(self.traceparent()),
                TRACESTATE => self.tracestate(),
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            match self.tracestate {
                Some(_) => vec![TRACEPARENT, TRACESTATE],
                None => vec![TRACEPARENT],
            }
        }
    }

    impl TraceContext {
        /// The context of the current `tracing` span, as OpenTelemetry sees it (through
        /// `tracing-opentelemetry`); `None` when there is none (no OpenTelemetry layer, no
        /// span, or the span is disabled).
        #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
        pub fn current() -> Option<Self> {
            Self::from_context(&tracing::Span::current().context())
        }

        /// The W3C headers of an OpenTelemetry context; `None` when its span context is not
        /// valid.
        #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
        pub fn from_context(cx: &Context) -> Option<Self> {
            if !cx.span().span_context().is_valid() {
                return None;
            }
            let mut carrier = Carrier::default();
            TraceContextPropagator::new().inject_context(cx, &mut carrier);
            Self::new(&carrier.traceparent?, carrier.tracestate.as_deref())
        }

        /// The OpenTelemetry context this one describes (a remote parent).
        #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
        pub fn to_context(&self) -> Context {
            TraceContextPropagator::new().extract(&self)
        }

        /// Makes `span` a child of this context. Call it before the span is entered. Returns
        /// whether the parent was set (not when `span` is disabled, already started, or no
        /// OpenTelemetry layer is installed).
        #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
        pub fn set_parent_of(&self, span: &tracing::Span) -> bool {
            span.set_parent(self.to_context()).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn refuses_bad_traceparents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        ] {
            assert!(TraceContext::new(bad, None).is_none(), "{bad:?}");
            assert!(TraceContext::decode(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn drops_a_bad_tracestate_and_keeps_the_parent() {
        let too_long = "a=".to_owned() + &"b".repeat(TraceContext::MAX_TRACESTATE_LEN);
        for bad in ["", "  ", "a=b\nc=d", "a=\u{e9}", too_long.as_str()] {
            let cx = TraceContext::new(TP, Some(bad)).unwrap();
            assert_eq!(cx.tracestate(), None, "{bad:?}");
            assert_eq!(cx.traceparent(), TP);
        }
        let ok = "a=".to_owned() + &"b".repeat(TraceContext::MAX_TRACESTATE_LEN - 2);
        let cx = TraceContext::new(TP, Some(&ok)).unwrap();
        assert_eq!(cx.encode().len(), TraceContext::MAX_ENCODED_LEN);
        assert_eq!(TraceContext::decode(&cx.encode()), Some(cx));
        let over = format!("{TP};{ok}x");
        assert!(TraceContext::decode(&over).is_none());
    }

    #[test]
    fn round_trips_with_separators_in_the_state() {
        let cx = TraceContext::new(TP, Some("congo=t61rcWkgMzE,rojo=a;b:c")).unwrap();
        assert_eq!(TraceContext::decode(&cx.encode()), Some(cx.clone()));
        assert_eq!(cx.tracestate(), Some("congo=t61rcWkgMzE,rojo=a;b:c"));
        let bare = TraceContext::new(TP, None).unwrap();
        assert_eq!(bare.encode(), TP);
        assert_eq!(TraceContext::decode(TP), Some(bare));
    }

    #[cfg(feature = "opentelemetry")]
    #[test]
    fn converts_to_and_from_an_opentelemetry_context() {
        use opentelemetry::trace::TraceContextExt;

        let cx = TraceContext::new(TP, Some("rojo=00f067aa0ba902b7")).unwrap();
        let otel = cx.to_context();
        let span = otel.span();
        let sc = span.span_context();
        assert!(sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(TraceContext::from_context(&otel), Some(cx));
        assert_eq!(
            TraceContext::from_context(&opentelemetry::Context::new()),
            None
        );
        // No OpenTelemetry layer is installed in this test: nothing to capture.
        assert_eq!(TraceContext::current(), None);
    }
}
