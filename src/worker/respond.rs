//! Between hyper and the user's service: what the worker adds to every request.
//!
//! - It counts a request as in flight from its head until its response body is
//!   done (written to the end, or dropped): the housekeeping sweep never takes a
//!   connection with a response still streaming (SSE, a slow download) for idle.
//! - It answers `400 Bad Request` itself, without calling the service, to an
//!   HTTP/1.1 request with no `Host`, and to any request with two `Host` fields or
//!   one that is not a valid host (RFC 9112 §3.2); and `413 Content Too Large`
//!   to a request whose `Content-Length` is over `--max-body-size`, or whose
//!   body of unknown length passes it while the service reads it (see
//!   [`RequestBody`]).
//! - A panic in the service's future answers `500 Internal Server Error`, or
//!   413 if the body had gone over `--max-body-size` (a panic
//!   in a response body, once its head is out, aborts that connection); either way
//!   the connection is closed and the worker goes on serving the others.
//! - Once the drain has started, every response says `Connection: close`.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use crate::log::{error, warn};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, HOST};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode, Version};

use super::access::Pending;
use super::connections::Entry;
use super::length::content_length;
use crate::body::{Overflow, RequestBody};
use crate::service::{BoxError, WorkerService};
use crate::sys::scoreboard::monotonic_ticks;

/// The body of every response: the service's, or the worker's own empty one.
pub type ResponseBody<S> = TrackedBody<<S as WorkerService>::Body>;

/// The user's service, seen through the worker's bookkeeping.
#[derive(Clone)]
pub struct Tracked<S> {
    pub inner: S,
    pub entry: Rc<Entry>,
}

impl<S: WorkerService> Service<Request<Incoming>> for Tracked<S> {
    type Response = Response<ResponseBody<S>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(tls) = self.entry.tls.get() {
            request.extensions_mut().insert(tls.clone());
        }
        // Taken from the request only when there is an access log to write
        // or slow requests to log.
        let pending =
            (self.entry.lifecycle.keeps_requests).then(|| Box::new(Pending::new(&request, self.entry.client)));
        let in_flight = InFlight::new(Rc::clone(&self.entry), pending);
        let max = self.entry.lifecycle.max_body;
        let over = match (self.entry.is_h2(), request.method()) {
            (false, _) => Over::Http1,
            (true, &hyper::Method::HEAD) => Over::Http2Head,
            // A CONNECT's response is a tunnel: hyper refuses a length on it.
            (true, &hyper::Method::CONNECT) => Over::Http1,
            (true, _) => Over::Http2,
        };
        let admission = match self.entry.redirect_to.get() {
            None => admit(&request, max),
            Some(port) => redirect(&request, port),
        };
        let inner = match admission {
            Admission::Whole => Inner::Service {
                future: self.inner.call(request.map(RequestBody::whole)),
                overflow: None,
            },
            Admission::Limited => {
                let (parts, body) = request.into_parts();
                let (body, overflow) = RequestBody::limited(body, max);
                Inner::Service {
                    future: self.inner.call(Request::from_parts(parts, body)),
                    overflow: Some(overflow),
                }
            }
            Admission::Refused(status) => Inner::Refused { status },
            Admission::Redirect(location) => Inner::Redirect { location },
        };
        if in_flight.2 != NO_STREAM {
            // Last: hyper hands the executor this stream's future next (see `streams`).
            if let Some(streams) = self.entry.streams.get() {
                streams.called(in_flight.2);
            }
        }
        TrackedFuture {
            inner,
            in_flight: Some(in_flight),
            over,
        }
    }
}

/// How a request reaches the service.
enum Admission {
    /// As it is.
    Whole,
    /// With `--max-body-size` set and a body of unknown length: counted as it
    /// is read, with an [`Overflow`] to tell when it went over.
    Limited,
    /// Not at all: the worker answers itself, 400 for the `Host`, 413 for a
    /// `Content-Length` over `--max-body-size` (`max`).
    Refused(StatusCode),
    /// Not at all: `--plain-redirect` sends it to this URL.
    Redirect(HeaderValue),
}

/// `--plain-redirect`: the same URL over HTTPS, on the TLS `port`; 400 for a
/// request whose host cannot be told.
fn redirect<B>(request: &Request<B>, port: u16) -> Admission {
    let host = match request.uri().authority() {
        Some(authority) => Some(authority.host().to_owned()),
        None => (request.headers().get(HOST))
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse::<hyper::http::uri::Authority>().ok())
            .map(|authority| authority.host().to_owned()),
    };
    let Some(host) = host.filter(|host| !host.is_empty() && !bad_host(request)) else {
        return Admission::Refused(StatusCode::BAD_REQUEST);
    };
    // `OPTIONS *` (no path) goes to the root.
    let path = match request.uri().path_and_query().map(|path| path.as_str()) {
        Some(path) if path.starts_with('/') => path,
        _ => "/",
    };
    let location = match port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    };
    match HeaderValue::from_str(&location) {
        Ok(location) => Admission::Redirect(location),
        Err(_) => Admission::Refused(StatusCode::BAD_REQUEST),
    }
}

/// Judged from the head alone; the request is moved only once, into the
/// service (this runs on every request, and a request is a few hundred bytes).
fn admit(request: &Request<Incoming>, max: u64) -> Admission {
    if bad_host(request) {
        return Admission::Refused(StatusCode::BAD_REQUEST);
    }
    if max == u64::MAX {
        return Admission::Whole;
    }
    let body = request.body();
    let hint = body.size_hint();
    if hint.lower() > max {
        Admission::Refused(StatusCode::PAYLOAD_TOO_LARGE)
    } else if hint.upper().is_some() || body.is_end_stream() {
        Admission::Whole
    } else {
        Admission::Limited
    }
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without a
/// `Host` field, and to any request with more than one or with an invalid one.
///
/// This runs on every request, so it avoids the map's hashing: clients send
/// `Host` first (RFC 9110 §7.2 asks them to), where a scan finds it at once; and
/// a second one is looked for only when some field name is repeated at all.
fn bad_host<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    let Some((_, host)) = headers.iter().find(|(name, _)| *name == HOST) else {
        return request.version() == Version::HTTP_11;
    };
    let repeated = headers.len() != headers.keys_len() && headers.get_all(HOST).iter().nth(1).is_some();
    repeated || !valid_host(host.as_bytes())
}

/// Whether every byte of `host` may be in a `Host` value; without a branch per
/// byte, as most hosts are valid.
fn valid_host(host: &[u8]) -> bool {
    host.iter()
        .fold(true, |valid, byte| valid & HOST_BYTE[usize::from(*byte)])
}

/// The bytes a `Host` value may hold (RFC 3986 `host [ ":" port ]`: letters,
/// digits, `-._~`, percent-encoding, sub-delims, and `:[]` for a port and an
/// IPv6 literal). Empty is allowed (a target with no authority); userinfo (`@`),
/// a path, spaces and controls are not. A table, not a parse: this runs on every
/// request, and `http::uri::Authority` copies the value to check it.
const HOST_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let allowed = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:[]";
    let mut i = 0;
    while i < allowed.len() {
        table[allowed[i] as usize] = true;
        i += 1;
    }
    table
};

/// A request counted as in flight: dropping it (when the response body is done,
/// or when the request is abandoned) ends that, starts the idle clock, and
/// writes the request's access log line, if there is an access log, and
/// counts its duration in the scoreboard. On HTTP/2 it also holds the
/// stream's place among those the sweep can reset. The last field is when the
/// request came, in [`monotonic_ticks`].
pub struct InFlight(Rc<Entry>, Option<Box<Pending>>, Stream, u64);

/// An HTTP/2 stream's place among its connection's (see `streams`), or
/// [`NO_STREAM`] for HTTP/1.1. (A `u32`, not an `Option<usize>`: it fits in
/// the padding of a value hyper moves on every request.)
type Stream = u32;
const NO_STREAM: Stream = u32::MAX;

impl InFlight {
    fn new(entry: Rc<Entry>, pending: Option<Box<Pending>>) -> InFlight {
        entry.in_flight.set(entry.in_flight.get() + 1);
        entry.lifecycle.request_began();
        entry.request_came();
        let stream = entry.streams.get().map_or(NO_STREAM, |streams| streams.open());
        InFlight(entry, pending, stream, monotonic_ticks())
    }

    /// The response's status: counted by class, and kept for the access log.
    fn answered(&mut self, status: StatusCode) {
        self.0.lifecycle.traffic().answered(status.as_u16());
        if let Some(pending) = &mut self.1 {
            pending.status = status.as_u16();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let entry = &self.0;
        entry.in_flight.set(entry.in_flight.get() - 1);
        entry.lifecycle.request_ended();
        entry.stamps.idle_now();
        if self.2 != NO_STREAM {
            if let Some(streams) = entry.streams.get() {
                streams.close(self.2);
            }
        }
        let ticks = monotonic_ticks().saturating_sub(self.3);
        let lifecycle = &entry.lifecycle;
        lifecycle.traffic().duration.observe(ticks);
        if let Some(pending) = &self.1 {
            if let Some(access_log) = &lifecycle.access_log {
                access_log.log(pending);
            }
            if lifecycle.slow_request.is_some_and(|slow| ticks >= slow) {
                pending.log_slow(crate::sys::traffic::us_from_ticks(ticks), lifecycle.slot());
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Tracked`], without a box per request.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: Inner<F>,
        in_flight: Option<InFlight>,
        over: Over,
    }
}

/// What the worker does to a response before hyper writes it.
#[derive(Clone, Copy)]
enum Over {
    /// Nothing: hyper writes an HTTP/1.1 response's length itself (and an
    /// HTTP/2 CONNECT's response is a tunnel, with none).
    Http1,
    /// Its `Content-Length`, from the worker's cache ([`super::length`]),
    /// where hyper would make a new value for each response.
    Http2,
    /// A HEAD over HTTP/2, whose response must go without its body: hyper
    /// drops it over HTTP/1.1 but sends it over HTTP/2 (RFC 9110, 9.3.2: no
    /// content in a response to HEAD). Its `Content-Length` stays.
    Http2Head,
}

pin_project_lite::pin_project! {
    /// The service's future, or the worker's own answer to a request it refused
    /// before calling the service. (One enum, not an `Option` and a status: the
    /// future stays as small as it can, since hyper moves it.)
    #[project = InnerProjection]
    enum Inner<F> {
        Service { #[pin] future: F, overflow: Option<Overflow> },
        Refused { status: StatusCode },
        Redirect { location: HeaderValue },
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (inner, overflow) = match this.inner.project() {
            InnerProjection::Service { future, overflow } => (future, overflow),
            InnerProjection::Refused { status } => {
                let in_flight = this.in_flight.take();
                return Poll::Ready(Ok(refuse(*status, in_flight)));
            }
            InnerProjection::Redirect { location } => {
                let in_flight = this.in_flight.take();
                let (status, location) = (StatusCode::PERMANENT_REDIRECT, Some(location.clone()));
                return Poll::Ready(Ok(own_answer(status, location, in_flight)));
            }
        };
        // The service is the user's code: a panic in it must cost this request,
        // not every connection of the worker.
        let polled = catch_unwind(AssertUnwindSafe(|| inner.poll(cx)));
        let in_flight = this.in_flight.take();
        // A body that went over `--max-body-size` is answered 413 whatever the
        // service made of it (an error, a 400, a panic on the error, or still
        // waiting).
        if overflow.as_ref().is_some_and(Overflow::happened) {
            if let Err(panic) = &polled {
                warn!(
                    "a request handler panicked on a body over --max-body-size: {}; answering 413",
                    super::panic_message(panic.as_ref())
                );
            }
            return Poll::Ready(Ok(refuse(StatusCode::PAYLOAD_TOO_LARGE, in_flight)));
        }
        let result = match polled {
            Ok(Poll::Pending) => {
                *this.in_flight = in_flight;
                return Poll::Pending;
            }
            Ok(Poll::Ready(result)) => result,
            Err(panic) => {
                error!(
                    "a request handler panicked: {}; answering 500",
                    super::panic_message(panic.as_ref())
                );
                return Poll::Ready(Ok(refuse(StatusCode::INTERNAL_SERVER_ERROR, in_flight)));
            }
        };
        // `in_flight` is always there on the first Ready, which is the last poll.
        let Some(mut in_flight) = in_flight else {
            return Poll::Pending;
        };
        if let Ok(response) = &result {
            in_flight.answered(response.status());
        }
        let lifecycle = &in_flight.0.lifecycle;
        lifecycle.served_one();
        // HTTP/2 has no `Connection` header: its drain is a GOAWAY.
        let close = lifecycle.is_draining() && !in_flight.0.is_h2();
        let over = *this.over;
        Poll::Ready(result.map(|response| {
            let mut response = response.map(|body| TrackedBody {
                inner: Either::Left(body),
                in_flight_guard: in_flight,
            });
            if close {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            match over {
                Over::Http1 => {}
                Over::Http2 => with_length(&mut response),
                Over::Http2Head => without_body(&mut response),
            }
            response
        }))
    }
}

/// An HTTP/2 response with the `Content-Length` hyper would give it (when the
/// body tells its length and is not empty), unless the service set one.
fn with_length<B: Body>(response: &mut Response<TrackedBody<B>>) {
    let Either::Left(body) = &response.body().inner else {
        return;
    };
    if body.is_end_stream() {
        return;
    }
    if let Some(length) = body.size_hint().exact() {
        response
            .headers_mut()
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| content_length(length));
    }
}

/// A response to HEAD, as HTTP/1.1 sends it: the head alone, with the
/// `Content-Length` the body would have had (when it tells), the body dropped.
fn without_body<B: Body>(response: &mut Response<TrackedBody<B>>) {
    if let Either::Left(body) = &response.body().inner {
        if let Some(length) = body.size_hint().exact() {
            response
                .headers_mut()
                .entry(CONTENT_LENGTH)
                .or_insert_with(|| content_length(length));
        }
    }
    response.body_mut().inner = Either::Right(Empty::new());
}

/// The worker's own answer (no body), after which the connection closes.
fn refuse<B: Body>(status: StatusCode, in_flight: Option<InFlight>) -> Response<TrackedBody<B>> {
    own_answer(status, None, in_flight)
}

/// The worker's own answer, with no body: a refusal, or (`location`)
/// `--plain-redirect`'s 308. HTTP/1.1 closes after it (after a redirect, the
/// client's next request goes to the HTTPS port; a connection left open would
/// be parked and served again as any other).
fn own_answer<B: Body>(
    status: StatusCode,
    location: Option<HeaderValue>,
    in_flight: Option<InFlight>,
) -> Response<TrackedBody<B>> {
    let Some(mut in_flight) = in_flight else {
        unreachable!("a response future is polled to Ready once")
    };
    in_flight.answered(status);
    in_flight.0.lifecycle.served_one();
    // On HTTP/2 only the stream ends, and `Connection` is not a header there.
    let h1 = !in_flight.0.is_h2();
    let mut response = Response::new(TrackedBody {
        inner: Either::Right(Empty::new()),
        in_flight_guard: in_flight,
    });
    *response.status_mut() = status;
    if let Some(location) = location {
        response.headers_mut().insert(hyper::header::LOCATION, location);
    }
    if h1 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// HTTP/2: once the body yields a piece, hyper holds it until the stream has
/// window for it; until hyper asks for the next, the response waits on the
/// client (see `streams`). (Out of line: HTTP/1.1 never comes here.)
#[inline(never)]
fn held_by_hyper<D>(guard: &InFlight, polled: &Poll<Option<Result<Frame<D>, impl Sized>>>) {
    let held = matches!(polled, Poll::Ready(Some(Ok(frame))) if frame.is_data());
    let entry = &guard.0;
    if let Some(streams) = entry.streams.get() {
        streams.held(guard.2, held.then(|| entry.stamps.now()));
    }
}

pin_project_lite::pin_project! {
    /// A response body, holding its request in flight until it is done.
    pub struct TrackedBody<B: Body> {
        #[pin]
        inner: Either<B, Empty<B::Data>>,
        in_flight_guard: InFlight,
    }
}

impl<B: Body> Body for TrackedBody<B>
where
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        let inner = this.inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
            Ok(polled) => {
                let guard = &*this.in_flight_guard;
                if guard.2 != NO_STREAM {
                    held_by_hyper(guard, &polled);
                }
                let polled = ready!(polled);
                if let (Some(pending), Some(Ok(frame))) = (&mut this.in_flight_guard.1, &polled) {
                    pending.bytes += frame.data_ref().map_or(0, |data| bytes::Buf::remaining(data) as u64);
                }
                Poll::Ready(polled)
            }
            Err(panic) => {
                let message = super::panic_message(panic.as_ref()).to_owned();
                error!("a response body panicked: {message}; closing its connection");
                Poll::Ready(Some(Err(format!("the response body panicked: {message}").into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
