//! What the worker keeps about every open connection (the table), and the
//! sweep that reads it:
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
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

use slab::Slab;

use super::conn::State;
use super::io::{Counted, OpenCount, Stamps};
use super::lifecycle::Lifecycle;
use super::streams::Streams;
use crate::sys::scoreboard::Record;

/// One open connection, as the sweep and its response futures see it.
pub struct Entry {
    /// Requests whose response is not done (head and body written, or dropped).
    pub(super) in_flight: Cell<u32>,
    /// What the socket stamps: reads and writes waiting, idle since when.
    pub(super) stamps: Arc<Stamps>,
    /// The socket, for the sweep's end-of-file probe. Valid while the entry is
    /// in the table: the connection closes it only just before it leaves.
    pub(super) fd: RawFd,
    /// The client's address (the access log's).
    pub(super) client: std::net::SocketAddr,
    /// Where it is in its life (see `conn`).
    state: Cell<State>,
    /// Set by the sweep.
    asked: Cell<Asked>,
    /// When the sweep asked it to close, in ticks.
    asked_at: Cell<u32>,
    /// HTTP/2: the streams whose requests are in flight (made once the
    /// connection is known to speak it: an HTTP/1.1 connection allocates nothing).
    pub(super) streams: std::cell::OnceCell<Rc<Streams>>,
    /// The connection task's waker, for the sweep to wake it.
    waker: RefCell<Option<Waker>>,
    /// Over TLS: what the handshake settled, for every request's extensions.
    pub(super) tls: std::cell::OnceCell<crate::TlsInfo>,
    /// `--plain-redirect`, on the plain port: the TLS port every request is sent to.
    pub(super) redirect_to: Cell<Option<u16>>,
    pub(super) lifecycle: Rc<Lifecycle>,
}

/// How long a connection may wait, in housekeeping ticks.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// With nothing in flight (the header read timeout, or the drain's grace).
    pub idle: u32,
    /// How an idle connection is closed.
    pub idle_close: Asked,
    /// For the next piece of a request body (the body read timeout).
    pub body: u32,
    /// For a write to make progress (the send timeout).
    pub send: u32,
    /// With nothing in flight, before an HTTP/1.1 connection is parked.
    pub park: u32,
}

/// What the sweep has asked of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Nothing yet.
    Nothing,
    /// The drain: hyper closes it when idle, or after the request whose head is
    /// arriving; the response says `Connection: close`; HTTP/2 gets a `GOAWAY`.
    Drain,
    /// A timeout: close it now, whatever half a request it holds.
    Close,
    /// The send timeout: reset it (`SO_LINGER` 0), so that the response still
    /// queued for a client that stopped reading does not stay in the kernel.
    Reset,
    /// Idle HTTP/1.1 keep-alive: take the socket back from hyper and park it
    /// (see `park`): what it held is freed until the client sends again.
    Park,
}

impl Entry {
    /// Keeps the task's waker for the sweep (it rarely changes: compare before cloning).
    pub(super) fn keep_waker(&self, waker: &Waker) {
        let mut parked = self.waker.borrow_mut();
        if !parked.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *parked = Some(waker.clone());
        }
    }

    /// Whether the sweep has asked anything of this connection.
    pub(super) fn is_asked(&self) -> bool {
        self.asked.get() != Asked::Nothing
    }

    pub(super) fn asked(&self) -> Asked {
        self.asked.get()
    }

    /// The connection speaks TLS, as `info` says.
    pub(super) fn set_tls(&self, info: &crate::TlsInfo) {
        let _ = self.tls.set(info.clone());
    }

    /// Forgets what the sweep asked (a park that found a request begun).
    pub(super) fn unask(&self) {
        self.asked.set(Asked::Nothing);
    }

    pub(super) fn state(&self) -> State {
        self.state.get()
    }

    pub(super) fn set_state(&self, state: State) {
        self.state.set(state);
    }

    /// HTTP/2: streams read the socket all the time, so a waiting read says
    /// nothing about a request body, and the drain is a `GOAWAY`.
    pub(super) fn is_h2(&self) -> bool {
        self.state.get() == State::Http2
    }

    /// A request has come on it: an HTTP/1.1 connection may be parked from now on.
    pub(super) fn request_came(&self) {
        if self.state.get() == State::Http1Fresh {
            self.state.set(State::Http1);
        }
    }

    pub(super) fn ask(&self, how: Asked) {
        self.asked.set(how);
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
    pub fn new(
        record: &'static Record,
        steer: Option<&'static crate::sys::steering::SlotLoad>,
        limit: Option<std::num::NonZeroUsize>,
    ) -> Connections {
        Connections {
            table: RefCell::new(Slab::new()),
            count: Arc::new(OpenCount::new(record, steer, limit)),
        }
    }

    /// Enters a connection in the table, in `state`, for as long as hyper serves it. Its
    /// place in the open count ([`Connections::count_one`]) is kept apart: it
    /// goes to the socket, so that an upgraded or a parked connection, out of
    /// the table, stays counted.
    pub fn enter(
        self: &Rc<Self>,
        lifecycle: &Rc<Lifecycle>,
        fd: RawFd,
        client: std::net::SocketAddr,
        state: State,
    ) -> Open {
        let entry = Rc::new(Entry {
            in_flight: Cell::new(0),
            stamps: Arc::new(Stamps::new(Arc::clone(&lifecycle.clock))),
            fd,
            client,
            state: Cell::new(state),
            asked: Cell::new(Asked::Nothing),
            asked_at: Cell::new(0),
            streams: std::cell::OnceCell::new(),
            waker: RefCell::new(None),
            tls: std::cell::OnceCell::new(),
            redirect_to: Cell::new(None),
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
            let h1 = !entry.is_h2();
            let stamps = &entry.stamps;
            // HTTP/2: a stream stalled on flow control is reset, whatever else
            // the connection is doing (a GOAWAY does not end its streams).
            if let (Some(streams), true) = (entry.streams.get(), in_flight) {
                streams.reset_stalled(now, stamps.data_sent(), limits.send);
            }
            match entry.asked.get() {
                Asked::Nothing => {}
                Asked::Drain => {
                    if let Some(how) = closing(entry, waited, limits) {
                        entry.ask(how);
                    }
                    continue;
                }
                Asked::Close | Asked::Reset | Asked::Park => continue,
            }
            let how = match (stamps.write_blocked(), stamps.read_blocked()) {
                (Some(since), _) if waited(since) > limits.send => Asked::Reset,
                (Some(_), _) => continue,
                (None, Some(since)) if h1 && in_flight && waited(since) > limits.body => Asked::Close,
                (None, _) if h1 && in_flight && client_gone(entry.fd) => Asked::Close,
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
                    false => Asked::Close,
                },
                // Served a request, nothing begun of the next (`Http1`): park it.
                (None, _)
                    if entry.state.get() == State::Http1 && !in_flight && waited(stamps.idle_since()) > limits.park =>
                {
                    Asked::Park
                }
                _ => continue,
            };
            parked += usize::from(how == Asked::Park);
            entry.ask(how);
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
            if entry.is_h2() && !entry.is_asked() {
                entry.ask(Asked::Drain);
            }
        }
    }
}

impl Open {
    /// The connection's entry in the table.
    pub fn entry(&self) -> &Rc<Entry> {
        &self.entry
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
    match entry.is_h2() && waited(sent) < waited(idle) {
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
fn closing(entry: &Entry, waited: impl Fn(u32) -> u32, limits: Limits) -> Option<Asked> {
    let stamps = &entry.stamps;
    match stamps.write_blocked() {
        Some(since) if waited(since) > limits.send => return Some(Asked::Reset),
        Some(_) => return None,
        None => {}
    }
    if !entry.is_h2() || entry.in_flight.get() > 0 {
        return None;
    }
    let quiet = waited(entry.asked_at.get()).min(waited(stamps.data_sent()));
    (quiet > limits.send).then_some(Asked::Close)
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
