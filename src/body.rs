//! The body of a request as the worker hands it to the service: hyper's own,
//! held to `--max-body-size` when its length is not known up front.
//!
//! A body that declares its length (`Content-Length`) is judged before the
//! service is called: over the limit, the worker answers 413 itself; within it,
//! hyper already refuses a byte more than declared. A body of unknown length (an
//! HTTP/1.1 chunked body, an HTTP/2 stream without `content-length`) can only be
//! judged as it arrives, so it is counted here, frame by frame: the frame that
//! would pass the limit is not handed over. The service gets an error instead
//! (`http_body_util::LengthLimitError`, which axum's extractors answer with 413),
//! and the worker answers 413 whatever the service answered, unless the
//! service's response had already begun.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::service::BoxError;

/// A request's body, as every service served by a worker receives it
/// (`Request<RequestBody>`). It is hyper's `Incoming`, counted against
/// `--max-body-size` when its length was not declared. Read it as any
/// [`hyper::body::Body`], e.g. with `http_body_util::BodyExt::collect`.
pub struct RequestBody {
    kind: Kind,
}

enum Kind {
    /// No limit, or a declared length hyper holds the body to.
    Whole(Incoming),
    /// A body of unknown length under `--max-body-size`. Boxed: most bodies
    /// are whole, and every request moves its body a few times.
    Limited(Box<Counted>),
}

/// A body counted against `--max-body-size`; `over` tells the request's
/// response future once it has passed the limit.
struct Counted {
    body: Limited<Incoming>,
    over: Arc<AtomicBool>,
}

/// Set once a request body of unknown length has passed `--max-body-size`.
#[derive(Debug, Default)]
pub(crate) struct Overflow(Arc<AtomicBool>);

impl Overflow {
    pub(crate) fn happened(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl RequestBody {
    /// A body handed over as it is.
    pub(crate) fn whole(body: Incoming) -> RequestBody {
        RequestBody {
            kind: Kind::Whole(body),
        }
    }

    /// A body of unknown length held to `max` bytes, and what tells that it
    /// went over them.
    pub(crate) fn limited(body: Incoming, max: u64) -> (RequestBody, Overflow) {
        let overflow = Overflow::default();
        // On a 32-bit target a limit past usize::MAX is no limit.
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let kind = Kind::Limited(Box::new(Counted {
            body: Limited::new(body, max),
            over: Arc::clone(&overflow.0),
        }));
        (RequestBody { kind }, overflow)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // `Incoming` is Unpin, and so `Limited` of it.
        match &mut self.get_mut().kind {
            Kind::Whole(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Limited(counted) => {
                let polled = Pin::new(&mut counted.body).poll_frame(cx);
                if let Poll::Ready(Some(Err(err))) = &polled {
                    if err.is::<LengthLimitError>() {
                        counted.over.store(true, Ordering::Relaxed);
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole(body) => body.is_end_stream(),
            Kind::Limited(counted) => counted.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Whole(body) => body.size_hint(),
            Kind::Limited(counted) => counted.body.size_hint(),
        }
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limited = matches!(self.kind, Kind::Limited(_));
        f.debug_struct("RequestBody").field("limited", &limited).finish()
    }
}
