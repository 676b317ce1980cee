//! [`ResponseBody`]: a cached body, the untouched inner body, or a partly read one.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of responses from [`ResponseCache`](crate::ResponseCache): either served from
    /// the cache, or the handler's body (possibly after some frames were read to decide whether
    /// it fits the size cap, which are replayed first, unchanged).
    pub struct ResponseBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Full { data: Option<Bytes> },
        Inner {
            #[pin]
            inner: B,
        },
        Prefixed {
            prefix: VecDeque<Frame<Bytes>>,
            inner: Pin<Box<B>>,
        },
        Failed { error: Option<B::Error> },
    }
}

impl<B: Body> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "cached",
            Kind::Inner { .. } | Kind::Prefixed { .. } => "inner",
            Kind::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
        }
    }

    pub(crate) fn inner(inner: B) -> Self {
        Self {
            kind: Kind::Inner { inner },
        }
    }

    pub(crate) fn prefixed(prefix: VecDeque<Frame<Bytes>>, inner: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Prefixed { prefix, inner },
        }
    }

    pub(crate) fn failed(error: B::Error) -> Self {
        Self {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner { inner } => inner.poll_frame(cx),
            KindProj::Prefixed { prefix, inner } => match prefix.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => inner.as_mut().poll_frame(cx),
            },
            KindProj::Failed { error } => Poll::Ready(error.take().map(Err)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Inner { inner } => inner.is_end_stream(),
            Kind::Prefixed { prefix, inner } => prefix.is_empty() && inner.is_end_stream(),
            Kind::Failed { error } => error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner { inner } => inner.size_hint(),
            Kind::Prefixed { prefix, inner } => {
                let extra: u64 = prefix
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let h = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower().saturating_add(extra));
                if let Some(u) = h.upper() {
                    out.set_upper(u.saturating_add(extra));
                }
                out
            }
            Kind::Failed { .. } => SizeHint::default(),
        }
    }
}

/// What reading a body up to a cap produced.
pub(crate) enum Collected<B: Body> {
    /// The whole body, within the cap, without trailers.
    Complete(Bytes),
    /// Over the cap, or with trailers: the frames read so far and the rest of the body.
    Partial(VecDeque<Frame<Bytes>>, Pin<Box<B>>),
    /// The body failed.
    Failed(B::Error),
}

/// Reads `body` while it stays within `cap` bytes.
pub(crate) async fn collect_capped<B>(body: B, cap: usize) -> Collected<B>
where
    B: Body<Data = Bytes>,
{
    let mut body = Box::pin(body);
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len = 0usize;
    loop {
        let next = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        match next {
            None => break,
            Some(Err(e)) => return Collected::Failed(e),
            Some(Ok(frame)) => {
                let is_data = frame.is_data();
                if let Some(d) = frame.data_ref() {
                    len = len.saturating_add(d.len());
                }
                frames.push_back(frame);
                if !is_data || len > cap {
                    return Collected::Partial(frames, body);
                }
            }
        }
    }
    if frames.len() == 1 {
        if let Some(Ok(d)) = frames.pop_front().map(Frame::into_data) {
            return Collected::Complete(d);
        }
        return Collected::Complete(Bytes::new());
    }
    let mut out = bytes::BytesMut::with_capacity(len);
    for f in frames {
        if let Ok(d) = f.into_data() {
            out.extend_from_slice(&d);
        }
    }
    Collected::Complete(out.freeze())
}
