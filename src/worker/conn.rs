//! One connection's life, and what the worker keeps about every open connection:
//! whether it has a request in flight, since when it has been waiting for one,
//! and since when a read or a write on it has been waiting for the client. A
//! housekeeping sweep (see `serve`) reads that four times a second and closes
//! what has waited too long, as nginx's timeouts do:
//!
//! - nothing in flight for longer than the header read timeout (an idle
//!   keep-alive connection, or a request head that is not arriving), or than a
//!   short grace once the drain has started;
//! - a request in flight whose body has not been readable for longer than the
//!   body read timeout (the worker reads the socket while a request is in flight
//!   only for its body: hyper's half-close mode, see `serve`);
//! - a response that could not be written for longer than the send timeout
//!   (a client that stopped reading; one that reads slowly is served to the end);
//! - a request in flight whose client has gone (end of file or reset);
//! - HTTP/2: a response that has waited on flow control for longer than the
//!   send timeout (its stream is reset, see `streams`), and a drained
//!   connection that does not close (its client does not acknowledge the
//!   `GOAWAY`'s `PING`, or takes nothing of what is queued for it): closed at
//!   the send timeout, once nothing is in flight. An idle HTTP/2 connection
//!   ends with a `GOAWAY` of the worker's own (see `frames`), then at once.
//!
//! A connection is closed before its first request only by the header read
//! timeout: clients that open connections ahead of need (a browser's
//! preconnect, a pool) send on them seconds later. Parking is for connections
//! that have served a request.
//!
//! One sweep a quarter second replaces a timer per request (hyper's own header
//! timer costs a timer-wheel insert and removal and a clock read on every request).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use hyper::server::conn::{http1, http2};
use slab::Slab;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::access::AccessLog;
use super::frames::NO_ERROR;
use super::io::{Clock, Counted, Io, OpenCount, Stamps};
use super::protocol::Protocol;
use super::respond::Tracked;
use super::streams::Streams;
use crate::service::WorkerService;
use crate::sys::scoreboard::Record;
use std::sync::atomic::Ordering::Relaxed;

/// What every response of this worker looks at: has the drain started (then it
/// carries `Connection: close`), and has the worker served its request quota.
/// Read on every response, so `Cell`s.
pub struct Lifecycle {
    draining: Cell<bool>,
    served: Cell<u64>,
    /// Requests after which the worker asks to be replaced; 0: never.
    quota: u64,
    quota_reached: Notify,
    /// Where the master (and the status views) see the count.
    record: &'static Record,
    /// Housekeeping ticks since the worker started (shared with every socket).
    pub(super) clock: Arc<Clock>,
    /// `--access-log`.
    pub(super) access_log: Option<AccessLog>,
    /// `--max-body-size`, or `u64::MAX`.
    pub(super) max_body: u64,
}

impl Lifecycle {
    pub fn new(quota: u64, record: &'static Record, access_log: Option<AccessLog>, max_body: Option<u64>) -> Lifecycle {
        Lifecycle {
            draining: Cell::new(false),
            served: Cell::new(0),
            quota,
            quota_reached: Notify::new(),
            record,
            clock: Arc::new(Clock::default()),
            access_log,
            max_body: max_body.unwrap_or(u64::MAX),
        }
    }

    pub fn start_drain(&self) {
        self.draining.set(true);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    pub fn now(&self) -> u32 {
        self.clock.now()
    }

    /// One housekeeping tick has passed.
    pub fn tick(&self) {
        self.clock.tick();
    }

    pub fn served(&self) -> u64 {
        self.served.get()
    }

    /// Resolves once, when the quota is reached; never without a quota.
    pub async fn quota_reached(&self) {
        if self.quota == 0 {
            return std::future::pending().await;
        }
        self.quota_reached.notified().await;
    }

    pub(super) fn served_one(&self) {
        let served = self.served.get() + 1;
        self.served.set(served);
        // A plain store: only this worker writes its record.
        self.record.requests.store(served, Relaxed);
        if served == self.quota {
            self.quota_reached.notify_one(); // kept as a permit if nobody waits yet
        }
    }
}

/// One open connection, as the sweep and its response futures see it.
pub struct Entry {
    /// Requests whose response is not done (head and body written, or dropped).
    pub(super) in_flight: Cell<u32>,
    /// What the socket stamps: reads and writes waiting, idle since when.
    pub(super) stamps: Arc<Stamps>,
    /// The socket, for the sweep's end-of-file probe. Valid while the entry is
    /// in the table: the connection closes it only just before it leaves.
    fd: RawFd,
    /// The client's address (the access log's).
    pub(super) client: std::net::SocketAddr,
    /// Set by the sweep.
    close: Cell<Close>,
    /// When the sweep asked it to close, in ticks.
    asked_at: Cell<u32>,
    /// It has had a request (parking is for connections that have).
    pub(super) served: Cell<bool>,
    /// HTTP/2: the streams whose requests are in flight (made once the
    /// connection is known to speak it: an HTTP/1.1 connection allocates nothing).
    pub(super) streams: std::cell::OnceCell<Rc<Streams>>,
    /// The connection task's waker, for the sweep to wake it.
    waker: RefCell<Option<Waker>>,
    /// HTTP/2: streams read the socket all the time, so a waiting read says
    /// nothing about a request body, and the drain is a GOAWAY.
    pub(super) h2: Cell<bool>,
    /// A park found a next request head begun (bytes in hyper's buffer): this
    /// connection is not idle, and the header read timeout bounds it instead.
    head_begun: Cell<bool>,
    pub(super) lifecycle: Rc<Lifecycle>,
}

/// How long a connection may wait, in housekeeping ticks.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// With nothing in flight (the header read timeout, or the drain's grace).
    pub idle: u32,
    /// How an idle connection is closed.
    pub idle_close: Close,
    /// For the next piece of a request body (the body read timeout).
    pub body: u32,
    /// For a write to make progress (the send timeout).
    pub send: u32,
    /// With nothing in flight, before an HTTP/1.1 connection is parked.
    pub park: u32,
}

/// How the sweep closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Not asked to.
    No,
    /// The drain: hyper closes it when idle, or after the request whose head is
    /// arriving; the response says `Connection: close`.
    Graceful,
    /// A timeout: drop it, whatever half a request it holds.
    Now,
    /// The send timeout: reset it (`SO_LINGER` 0), so that the response still
    /// queued for a client that stopped reading does not stay in the kernel.
    Reset,
    /// Idle HTTP/1.1 keep-alive: take the socket back from hyper and park it
    /// (see `park`): what it held is freed until the client sends again.
    Park,
}

impl Entry {
    /// Keeps the task's waker for the sweep (it rarely changes: compare before cloning).
    fn keep_waker(&self, waker: &Waker) {
        let mut parked = self.waker.borrow_mut();
        if !parked.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *parked = Some(waker.clone());
        }
    }

    /// Whether the sweep has asked anything of this connection.
    fn asked(&self) -> bool {
        self.close.get() != Close::No
    }

    fn ask_to_close(&self, how: Close) {
        self.close.set(how);
        self.asked_at.set(self.stamps.now());
        if let Some(waker) = self.waker.borrow().as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// Every open connection of this worker: the count (upgraded connections
/// included), and the entries the sweep reads (connections hyper still serves).
pub struct Connections {
    table: RefCell<Slab<Rc<Entry>>>,
    count: Arc<OpenCount>,
}

/// A connection's place in the sweep's table, held while hyper serves it.
pub struct Open {
    connections: Rc<Connections>,
    key: usize,
    entry: Rc<Entry>,
}

impl Connections {
    pub fn new(record: &'static Record, limit: Option<std::num::NonZeroUsize>) -> Connections {
        Connections {
            table: RefCell::new(Slab::new()),
            count: Arc::new(OpenCount::new(record, limit)),
        }
    }

    /// Enters a connection in the table, for as long as hyper serves it. Its
    /// place in the open count ([`Connections::count_one`]) is kept apart: it
    /// goes to the socket, so that an upgraded or a parked connection, out of
    /// the table, stays counted.
    pub fn enter(self: &Rc<Self>, lifecycle: &Rc<Lifecycle>, fd: RawFd, client: std::net::SocketAddr) -> Open {
        let entry = Rc::new(Entry {
            in_flight: Cell::new(0),
            stamps: Arc::new(Stamps::new(Arc::clone(&lifecycle.clock))),
            fd,
            client,
            close: Cell::new(Close::No),
            asked_at: Cell::new(0),
            served: Cell::new(false),
            streams: std::cell::OnceCell::new(),
            waker: RefCell::new(None),
            h2: Cell::new(false),
            head_begun: Cell::new(false),
            lifecycle: Rc::clone(lifecycle),
        });
        let key = self.table.borrow_mut().insert(Rc::clone(&entry));
        Open {
            connections: Rc::clone(self),
            key,
            entry,
        }
    }

    /// Counts one more open connection, until the guard is dropped.
    pub fn count_one(&self) -> Counted {
        self.count.count()
    }

    /// Open connections, upgraded ones included.
    pub fn count(&self) -> usize {
        self.count.get()
    }

    pub async fn all_closed(&self) {
        self.count.all_closed().await;
    }

    /// Resolves once this worker may accept another connection (`--max-connections`).
    pub async fn below_limit(&self) {
        self.count.below_limit().await;
    }

    /// Asks every connection that has waited longer than `limits` allow (as of
    /// tick `now`) to close. Longer than: a stamp was taken at some moment within
    /// its tick, so `limit` whole ticks later up to one tick of the limit may not
    /// have passed yet; one tick more, it has.
    /// Returns how many connections it asked to park.
    pub fn sweep(&self, now: u32, limits: Limits) -> usize {
        let mut parked = 0;
        let waited = |since: u32| now.wrapping_sub(since);
        for (_, entry) in self.table.borrow().iter() {
            let in_flight = entry.in_flight.get() > 0;
            // HTTP/2 reads the socket all along (so hyper sees a client go), and
            // a read waiting says nothing of a body: the body rules are HTTP/1's.
            let h2 = entry.h2.get();
            let h1 = !h2;
            let stamps = &entry.stamps;
            // HTTP/2: a stream stalled on flow control is reset, whatever else
            // the connection is doing (a GOAWAY does not end its streams).
            if let (Some(streams), true) = (entry.streams.get(), in_flight) {
                streams.reset_stalled(now, stamps.data_sent(), limits.send);
            }
            match entry.close.get() {
                Close::No => {}
                Close::Graceful => {
                    if let Some(how) = closing(entry, waited, limits) {
                        entry.ask_to_close(how);
                    }
                    continue;
                }
                Close::Now | Close::Reset | Close::Park => continue,
            }
            let how = match (stamps.write_blocked(), stamps.read_blocked()) {
                (Some(since), _) if waited(since) > limits.send => Close::Reset,
                (Some(_), _) => continue,
                (None, Some(since)) if h1 && in_flight && waited(since) > limits.body => Close::Now,
                (None, _) if h1 && in_flight && client_gone(entry.fd) => Close::Now,
                // Not yet a request (still detecting its protocol, or its first
                // head on the way), or idle keep-alive: the header read timeout.
                // (HTTP/2: a response whose stream is done may still be on its
                // way, from h2's buffers: a `DATA` frame written is not idle.)
                (None, _) if !in_flight && waited(idle_since(entry, waited)) > limits.idle => match h1 {
                    true => limits.idle_close,
                    // HTTP/2 (a drained one was asked at the drain's start): a
                    // GOAWAY naming the last stream taken, then the close, as
                    // nginx and Go's server do. (Not hyper's graceful close,
                    // whose GOAWAY comes with a PING: python-h2, and so httpx,
                    // fails the next request on a connection that got one.)
                    false => Close::Now,
                },
                (None, _)
                    if h1
                        && !in_flight
                        && entry.served.get()
                        && !entry.head_begun.get()
                        && waited(stamps.idle_since()) > limits.park =>
                {
                    Close::Park
                }
                _ => continue,
            };
            parked += usize::from(how == Close::Park);
            entry.ask_to_close(how);
        }
        parked
    }

    /// The drain has started: every connection's idle time counts from now,
    /// and every HTTP/2 connection gets its GOAWAY now (its streams in flight go
    /// on; an HTTP/1.1 connection is told by `Connection: close` on its next
    /// response instead).
    pub fn start_drain(&self) {
        for (_, entry) in self.table.borrow().iter() {
            entry.stamps.idle_now();
            if entry.h2.get() && !entry.asked() {
                entry.ask_to_close(Close::Graceful);
            }
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.connections.table.borrow_mut().remove(self.key);
    }
}

/// Since when a connection has had nothing in flight and (HTTP/2) sent nothing.
fn idle_since(entry: &Entry, waited: impl Fn(u32) -> u32) -> u32 {
    let (idle, sent) = (entry.stamps.idle_since(), entry.stamps.data_sent());
    // The later of the two: the one waited for least.
    match entry.h2.get() && waited(sent) < waited(idle) {
        true => sent,
        false => idle,
    }
}

/// What the sweep does with a connection asked to close gracefully (the
/// drain) that is still open. A client that stopped reading is reset at the
/// send timeout. HTTP/1.1 closes by itself once idle. HTTP/2, once nothing is
/// in flight: hyper's `GOAWAY` came with a `PING`, and hyper closes the
/// connection only when the `PING` is acknowledged and what it still holds for
/// the client is sent. A client has the send timeout to do that, as it has to
/// take any write: one that does not (it never acknowledges, or it takes
/// nothing of what is queued for it) is closed then.
fn closing(entry: &Entry, waited: impl Fn(u32) -> u32, limits: Limits) -> Option<Close> {
    let stamps = &entry.stamps;
    match stamps.write_blocked() {
        Some(since) if waited(since) > limits.send => return Some(Close::Reset),
        Some(_) => return None,
        None => {}
    }
    if !entry.h2.get() || entry.in_flight.get() > 0 {
        return None;
    }
    let quiet = waited(entry.asked_at.get()).min(waited(stamps.data_sent()));
    (quiet > limits.send).then_some(Close::Now)
}

/// True if the client of a connection with a request in flight has closed it
/// (end of file) or reset it. Only asked while a request is in flight: hyper does
/// not read then (half-close mode), so nothing else would notice, and the
/// request's work would go on for nobody. A peek, so nothing is consumed.
fn client_gone(fd: RawFd) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: `fd` is the connection's open socket (see `Entry::fd`), and the
    // buffer is valid for the one byte asked for.
    let n = unsafe { libc::recv(fd, byte.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => {
            let err = io::Error::last_os_error();
            !matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
        }
    }
}

/// The HTTP/1.1 and HTTP/2 connection settings of this worker.
pub struct Protocols {
    pub h1: http1::Builder,
    pub h2: http2::Builder<super::streams::LocalExec>,
}

/// Where a connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Newly accepted: its first bytes tell HTTP/2 from HTTP/1.1.
    New,
    /// Back from the parking: HTTP/1.1.
    Unparked,
}

/// How serving a connection ended.
pub enum Ended<S> {
    /// Closed, by either side.
    Closed,
    /// Idle HTTP/1.1 keep-alive, taken back from hyper, for the parking.
    Idle {
        stream: TcpStream,
        service: S,
        counted: Counted,
        /// When it became idle, in housekeeping ticks.
        since: u32,
    },
}

/// Serves one connection until the client closes it, until the sweep closes
/// it, or until the sweep asks to park it.
pub async fn serve_connection<S: WorkerService>(
    stream: TcpStream,
    service: S,
    protocols: &Protocols,
    open: Open,
    counted: Counted,
    start: Start,
) -> Ended<S> {
    let entry = Rc::clone(&open.entry);
    let protocol = match start {
        Start::Unparked => {
            entry.served.set(true);
            Protocol::Http1(bytes::Bytes::new())
        }
        Start::New => {
            let asked = || entry.asked();
            let keep_waker = |waker: &Waker| entry.keep_waker(waker);
            // `None`: closed, reset or timed out before it said anything: nothing to answer.
            match super::protocol::detect(&stream, asked, keep_waker).await {
                Some(protocol) => protocol,
                None => return Ended::Closed,
            }
        }
    };
    let tracked = Tracked {
        inner: service,
        entry: Rc::clone(&entry),
    };
    let stamps = Arc::clone(&entry.stamps);
    // The connections are boxed: they are large, and the task's future would
    // otherwise be copied whole on every move (into the task, between its stages).
    match protocol {
        Protocol::Http1(read) => {
            let mut io = Io::new(stream, read, stamps, counted);
            loop {
                // With upgrades: a `101 Switching Protocols` hands the socket to
                // the service (a WebSocket), and this connection's part ends there.
                let conn = protocols.h1.serve_connection(io, tracked.clone()).with_upgrades();
                let mut watched = Watched::new(Box::pin(conn), Rc::clone(&entry));
                if (&mut watched).await != Outcome::Park {
                    return Ended::Closed;
                }
                // Idle: take the socket (and any bytes of a next head) back from hyper.
                let Some(parts) = Pin::into_inner(watched.conn).into_parts() else {
                    return Ended::Closed;
                };
                io = parts.io;
                io.give_back(parts.read_buf);
                if io.has_prefix() {
                    // The next request has begun: serve it now. (Parked, it would
                    // wait for the socket, and a whole head already read, from a
                    // client that pipelines, would wait forever.)
                    crate::log::debug!("an idle keep-alive connection has a request head begun: not parked");
                    entry.head_begun.set(true);
                    entry.close.set(Close::No);
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
            entry.h2.set(true);
            let _ = entry.streams.set(Rc::default());
            if entry.lifecycle.is_draining() && !entry.asked() {
                // Taken from the queue during the drain: its GOAWAY is now.
                entry.ask_to_close(Close::Graceful);
            }
            let io = Io::h2(stream, read, stamps, counted);
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
    Park,
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

impl<S: WorkerService> Served for http2::Connection<Io, Tracked<S>, super::streams::LocalExec> {
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// A hyper connection that the sweep can ask to close: idle, it closes at once;
/// with requests in flight, after their responses.
struct Watched<C> {
    conn: Pin<Box<C>>,
    entry: Rc<Entry>,
    shut: bool,
}

impl<C> Watched<C> {
    fn new(conn: Pin<Box<C>>, entry: Rc<Entry>) -> Watched<C> {
        Watched {
            conn,
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
        match this.entry.close.get() {
            Close::No => {}
            // Dropping the connection closes the socket (HTTP/2: after a GOAWAY).
            Close::Now => {
                if this.entry.h2.get() {
                    this.entry.stamps.goaway_on_close(NO_ERROR);
                }
                return Poll::Ready(Outcome::Done);
            }
            Close::Park => return Poll::Ready(Outcome::Park),
            Close::Reset => {
                // SAFETY: the connection, which owns this fd, is alive for this call.
                let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(this.entry.fd) };
                // Best effort: without it, the close is an ordinary one.
                let _ = socket2::SockRef::from(&socket).set_linger(Some(std::time::Duration::ZERO));
                return Poll::Ready(Outcome::Done);
            }
            Close::Graceful if !this.shut => {
                this.shut = true;
                this.conn.as_mut().graceful();
            }
            Close::Graceful => {}
        }
        match this.conn.as_mut().poll(cx) {
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
