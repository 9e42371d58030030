//! One connection's life, from the accept to the close, as one state machine.
//!
//! ```text
//!              accepted
//!                 │
//!                 ▼
//!            Detecting ── the HTTP/2 preface, or ALPN h2 ───────► Http2
//!                 │                                                 │
//!           other bytes                                             │
//!                 ▼                                                 │
//!            Http1Fresh   (its first request on its way)            │
//!                 │ a request comes                                 │
//!                 ▼                                                 │
//!  unparked ─► Http1 ◄──── the client sends again ─── parked        │
//!               │  │  └─── idle for 1 s: Asked::Park ──► (out of    │
//!               │  │                                     the table) │
//!               │  └─ idle, with a next head begun ─► Http1HeadBegun│
//!               │ 101 Switching Protocols                           │
//!               ▼                                                   │
//!           upgraded (the service owns the socket; out of the table)│
//!                                                                   │
//!  any state in the table ── asked by the sweep (Drain, Close,      │
//!  Reset) or closed by the client or hyper ──► closing ──► closed ◄─┘
//! ```
//!
//! Over TLS, `Detecting` is the handshake, and ALPN tells the protocol.
//!
//! The states in the table (`Detecting` to `Http2`) are [`State`], kept in
//! the connection's entry for the sweep (see `connections`); what the sweep
//! asks of it is an [`Asked`]; parked and upgraded connections are out of the
//! table and counted only by their sockets.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use hyper::server::conn::{http1, http2};

use super::connections::{Asked, Open};
use super::frames::NO_ERROR;
use super::io::{Counted, H2Io, Io, Stream};
use super::protocol::{Protocol, Protocols};
use super::respond::Tracked;
use crate::service::WorkerService;

/// Where a connection the sweep watches is in its life (see the diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Newly accepted: its first bytes tell HTTP/2's preface from HTTP/1.1.
    Detecting,
    /// HTTP/1.1 before its first request: closed only by the header read
    /// timeout (clients that open connections ahead of need send seconds
    /// later), never parked.
    Http1Fresh,
    /// HTTP/1.1 that has had a request: parked once idle long enough.
    Http1,
    /// HTTP/1.1 whose next request head had begun (bytes in hyper's buffer)
    /// when it was to be parked: not idle, so the header read timeout bounds
    /// it, and it is not parked again.
    Http1HeadBegun,
    /// HTTP/2 (prior knowledge, or chosen by ALPN over TLS).
    Http2,
}

/// Where a connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Newly accepted: its first bytes tell HTTP/2 from HTTP/1.1 (over TLS,
    /// the handshake comes first, and ALPN tells).
    New,
    /// Newly accepted on the plain port beside a TLS one (`--plain-port`):
    /// no TLS; with `--plain-redirect`, every request is redirected to HTTPS.
    NewPlain,
    /// Back from the parking: HTTP/1.1 that has had a request.
    Unparked,
}

impl Start {
    /// The state it enters the table in.
    pub fn state(self) -> State {
        match self {
            Start::New | Start::NewPlain => State::Detecting,
            Start::Unparked => State::Http1,
        }
    }
}

/// How serving a connection ended.
pub enum Ended<S> {
    /// Closed, by either side.
    Closed,
    /// Idle HTTP/1.1 keep-alive, taken back from hyper, for the parking.
    Idle {
        stream: Stream,
        service: S,
        counted: Counted,
        /// When it became idle, in housekeeping ticks.
        since: u32,
    },
}

/// Serves one connection until the client closes it, until the sweep closes
/// it, or until the sweep asks to park it. `stream` is a new connection's
/// socket (`Start::New`: TLS, if the port serves it, is still to be
/// negotiated) or a parked connection's stream.
pub async fn serve_connection<S: WorkerService>(
    stream: Stream,
    service: S,
    protocols: &Protocols,
    open: Open,
    counted: Counted,
    start: Start,
) -> Ended<S> {
    let entry = Rc::clone(open.entry());
    let (stream, protocol) = match (start, stream, &protocols.tls) {
        (Start::Unparked, stream, _) => (stream, Protocol::Http1(bytes::BytesMut::new())),
        (Start::New, Stream::Plain(tcp), Some(tls)) => {
            let asked = || entry.is_asked();
            let keep_waker = |waker: &Waker| entry.keep_waker(waker);
            // Boxed: rustls's handshake state is large, and would otherwise
            // make every connection's task larger, plain ones too (the task's
            // future is copied whole when it is spawned).
            let Some(conn) = Box::pin(super::tls::handshake(tls, tcp, entry.client, asked, keep_waker)).await else {
                return Ended::Closed;
            };
            // ALPN said which: what follows the handshake is that protocol's.
            let protocol = match conn.info.is_h2() {
                true => Protocol::Http2(bytes::BytesMut::new()),
                false => Protocol::Http1(bytes::BytesMut::new()),
            };
            (Stream::Tls(Box::new(conn)), protocol)
        }
        (Start::New | Start::NewPlain, stream, _) => {
            if start == Start::NewPlain {
                entry.redirect_to.set(protocols.redirect_to);
            }
            let asked = || entry.is_asked();
            let keep_waker = |waker: &Waker| entry.keep_waker(waker);
            // `None`: closed, reset or timed out before it said anything: nothing to answer.
            match super::protocol::detect(stream.tcp(), asked, keep_waker).await {
                Some(protocol) => (stream, protocol),
                None => return Ended::Closed,
            }
        }
    };
    if let Stream::Tls(conn) = &stream {
        entry.set_tls(&conn.info);
    }
    let tracked = Tracked {
        inner: service,
        entry: Rc::clone(&entry),
    };
    let stamps = Arc::clone(&entry.stamps);
    // The connections are boxed: they are large, and the task's future would
    // otherwise be copied whole on every move (into the task, between its stages).
    match protocol {
        Protocol::Http1(read) => {
            if entry.state() == State::Detecting {
                entry.set_state(State::Http1Fresh);
            }
            let mut io = Io::new(stream, read, stamps, counted);
            loop {
                // With upgrades: a `101 Switching Protocols` hands the socket to
                // the service (a WebSocket), and this connection's part ends there.
                let conn = protocols.h1.serve_connection(io, tracked.clone()).with_upgrades();
                let mut watched = Watched::new(Box::pin(conn), Rc::clone(&entry));
                if (&mut watched).await != Outcome::Parked {
                    return Ended::Closed;
                }
                // Idle: take the socket (and any bytes of a next head) back from hyper.
                let Some(parts) = Pin::into_inner(watched.conn).into_parts() else {
                    return Ended::Closed;
                };
                io = parts.io;
                io.give_back(parts.read_buf);
                if io.has_begun() {
                    // The next request has begun: serve it now. (Parked, it would
                    // wait for the socket, and a whole head already read, from a
                    // client that pipelines, would wait forever.)
                    crate::log::debug!("an idle keep-alive connection has a request head begun: not parked");
                    entry.set_state(State::Http1HeadBegun);
                    entry.unask();
                    continue;
                }
                let (stream, counted) = io.into_parts();
                return Ended::Idle {
                    stream,
                    service: tracked.inner,
                    counted,
                    since: entry.stamps.idle_since(),
                };
            }
        }
        Protocol::Http2(read) => {
            entry.set_state(State::Http2);
            let _ = entry.streams.set(Rc::default());
            if entry.lifecycle.is_draining() && !entry.is_asked() {
                // Taken from the queue during the drain: its GOAWAY is now.
                entry.ask(Asked::Drain);
            }
            let io = H2Io::new(stream, read, stamps, counted);
            let conn = protocols.h2.serve_connection(io, tracked);
            Watched::new(Box::pin(conn), Rc::clone(&entry)).await;
            if entry.stamps.goaway() == Some(super::frames::ENHANCE_YOUR_CALM) {
                crate::log::info!(
                    "{}: HTTP/2 flood (control frames past the connection's allowance): GOAWAY ENHANCE_YOUR_CALM, closed",
                    entry.client
                );
            }
            Ended::Closed
        }
    }
}

/// How a [`Watched`] connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Closed: by the client, by hyper (an error, or the end of a drain), or by the sweep.
    Done,
    /// The sweep asked to park it (idle HTTP/1.1 keep-alive).
    Parked,
}

/// A hyper connection of either protocol, as [`Watched`] drives it.
trait Served: Future<Output = hyper::Result<()>> {
    /// HTTP/1.1: close once the response in flight is done; HTTP/2: GOAWAY, and
    /// close once the open streams are done.
    fn graceful(self: Pin<&mut Self>);
}

impl<S: WorkerService> Served for http1::UpgradeableConnection<Io, Tracked<S>> {
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<S: WorkerService> Served for http2::Connection<H2Io, Tracked<S>, super::streams::LocalExec> {
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// A hyper connection that the sweep can ask to close: idle, it closes at once;
/// with requests in flight, after their responses.
struct Watched<C> {
    conn: Pin<Box<C>>,
    entry: Rc<super::connections::Entry>,
    shut: bool,
    /// HTTP/2: the streams hyper hands over, polled as its poll returns.
    streams: HandedOver,
}

/// HTTP/2: the connection's streams (see `streams`), whose handed-over ones
/// are polled as hyper's poll of the connection returns. A panic in that poll
/// leaves them, holding the connection's entry: when the connection is
/// dropped, they become tasks, which end them (dropped here, they would run
/// the user's code during the unwind).
struct HandedOver(Option<Rc<super::streams::Streams>>);

impl HandedOver {
    fn run_ready(&self) {
        if let Some(streams) = &self.0 {
            streams.run_ready();
        }
    }
}

impl Drop for HandedOver {
    fn drop(&mut self) {
        if let Some(streams) = &self.0 {
            streams.spawn_handed_over();
        }
    }
}

impl<C> Watched<C> {
    fn new(conn: Pin<Box<C>>, entry: Rc<super::connections::Entry>) -> Watched<C> {
        Watched {
            conn,
            streams: HandedOver(entry.streams.get().cloned()),
            entry,
            shut: false,
        }
    }
}

impl<C: Served> Future for Watched<C> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Unpin: the connection is boxed.
        let this = &mut *self;
        match this.entry.asked() {
            Asked::Nothing => {}
            // Dropping the connection closes the socket (HTTP/2: after a GOAWAY).
            Asked::Close => {
                if this.entry.is_h2() {
                    this.entry.stamps.goaway_on_close(NO_ERROR);
                }
                return Poll::Ready(Outcome::Done);
            }
            Asked::Park => return Poll::Ready(Outcome::Parked),
            Asked::Reset => {
                // SAFETY: the connection, which owns this fd, is alive for this call.
                let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(this.entry.fd) };
                // Best effort: without it, the close is an ordinary one.
                let _ = socket2::SockRef::from(&socket).set_linger(Some(std::time::Duration::ZERO));
                return Poll::Ready(Outcome::Done);
            }
            Asked::Drain if !this.shut => {
                this.shut = true;
                this.conn.as_mut().graceful();
            }
            Asked::Drain => {}
        }
        let polled = this.conn.as_mut().poll(cx);
        // The streams hyper handed over meanwhile (see `streams::LocalExec`).
        this.streams.run_ready();
        match polled {
            // Errors are the client's doing (reset, malformed request): hyper has
            // already answered what it could, and there is nobody to tell.
            Poll::Ready(_) => Poll::Ready(Outcome::Done),
            Poll::Pending => {
                this.entry.keep_waker(cx.waker());
                Poll::Pending
            }
        }
    }
}
