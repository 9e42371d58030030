//! One connection's life, and what the worker keeps about every open connection:
//! whether it has a request in flight, and since when it has been waiting for
//! one. A housekeeping sweep (see `serve`) reads that to close connections idle
//! too long: past the header read timeout, or past a short grace once the drain
//! has started. One sweep a quarter second replaces a timer per request (hyper's
//! own header timer costs a timer-wheel insert and removal and a clock read on
//! every request).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll, Waker};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slab::Slab;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::scoreboard::Record;
use crate::service::WorkerService;
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
    /// Housekeeping ticks since the worker started: a clock that costs a `Cell`
    /// read, as precise as the sweep that uses it.
    now: Cell<u32>,
}

impl Lifecycle {
    pub fn new(quota: u64, record: &'static Record) -> Lifecycle {
        Lifecycle {
            draining: Cell::new(false),
            served: Cell::new(0),
            quota,
            quota_reached: Notify::new(),
            record,
            now: Cell::new(0),
        }
    }

    pub fn start_drain(&self) {
        self.draining.set(true);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    pub fn now(&self) -> u32 {
        self.now.get()
    }

    /// One housekeeping tick has passed.
    pub fn tick(&self) {
        self.now.set(self.now.get().wrapping_add(1));
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

    fn served_one(&self) {
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
struct Entry {
    in_flight: Cell<u32>,
    /// The tick at which it last had nothing in flight: accepted, or a response
    /// produced. (A response body still being written counts as idle: at worst
    /// such a connection is not kept alive after a body slower than the timeout.)
    idle_since: Cell<u32>,
    /// Set by the sweep.
    close: Cell<Close>,
    /// The connection task's waker, for the sweep to wake it.
    waker: RefCell<Option<Waker>>,
    lifecycle: Rc<Lifecycle>,
}

/// How the sweep closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Not asked to.
    No,
    /// The drain: hyper closes it when idle, or after the request whose head is
    /// arriving; the response says `Connection: close`.
    Graceful,
    /// The header read timeout: drop it, whatever half a head it holds.
    Now,
}

impl Entry {
    fn ask_to_close(&self, how: Close) {
        self.close.set(how);
        if let Some(waker) = self.waker.borrow().as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// Every open connection of this worker: the count, and the entries the sweep reads.
pub struct Connections {
    table: RefCell<Slab<Rc<Entry>>>,
    closed: Notify,
    record: &'static Record,
}

/// Held by a connection's task; dropping it counts the connection as closed.
pub struct Open {
    connections: Rc<Connections>,
    key: usize,
    entry: Rc<Entry>,
}

impl Connections {
    pub fn new(record: &'static Record) -> Connections {
        Connections {
            table: RefCell::new(Slab::new()),
            closed: Notify::new(),
            record,
        }
    }

    pub fn open(self: &Rc<Self>, lifecycle: &Rc<Lifecycle>) -> Open {
        let entry = Rc::new(Entry {
            in_flight: Cell::new(0),
            idle_since: Cell::new(lifecycle.now()),
            close: Cell::new(Close::No),
            waker: RefCell::new(None),
            lifecycle: Rc::clone(lifecycle),
        });
        let mut table = self.table.borrow_mut();
        let key = table.insert(Rc::clone(&entry));
        self.record.connections.store(table.len() as u64, Relaxed);
        Open {
            connections: Rc::clone(self),
            key,
            entry,
        }
    }

    pub fn count(&self) -> usize {
        self.table.borrow().len()
    }

    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Asks every connection that has had nothing in flight for more than `limit`
    /// ticks (as of tick `now`) to close. More than: `idle_since` was stamped at
    /// some moment within its tick, so `limit` whole ticks later up to one tick of
    /// the limit may not have passed yet; one tick more, it has.
    pub fn close_idle(&self, now: u32, limit: u32, how: Close) {
        for (_, entry) in self.table.borrow().iter() {
            let idle = entry.in_flight.get() == 0 && now.wrapping_sub(entry.idle_since.get()) > limit;
            if idle && entry.close.get() == Close::No {
                entry.ask_to_close(how);
            }
        }
    }

    /// The drain has started at tick `now`: every connection's idle time counts from here.
    pub fn restart_idle_clocks(&self, now: u32) {
        for (_, entry) in self.table.borrow().iter() {
            entry.idle_since.set(now);
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut table = self.connections.table.borrow_mut();
        table.remove(self.key);
        self.connections.record.connections.store(table.len() as u64, Relaxed);
        if table.is_empty() {
            self.connections.closed.notify_waiters();
        }
    }
}

/// Serves one connection until the client closes it, or until the sweep closes it.
pub async fn serve_connection<S: WorkerService>(stream: TcpStream, service: S, builder: &http1::Builder, open: Open) {
    let tracked = Tracked {
        inner: service,
        entry: Rc::clone(&open.entry),
    };
    // Errors are the client's doing (reset, malformed request): hyper has already
    // answered what it could, and there is nobody to tell.
    let _ = Watched {
        // Boxed: hyper's connection is large, and the task's future would otherwise
        // be copied whole on every move (into the task, between its stages).
        conn: Box::pin(builder.serve_connection(Io(TokioIo::new(stream)), tracked)),
        entry: Rc::clone(&open.entry),
        shut: false,
    }
    .await;
    drop(open);
}

pin_project_lite::pin_project! {
    /// A hyper connection that the sweep can ask to close: idle, it closes at
    /// once; with a request in flight, after its response.
    struct Watched<S: WorkerService> {
        conn: Pin<Box<http1::Connection<Io, Tracked<S>>>>,
        entry: Rc<Entry>,
        shut: bool,
    }
}

impl<S: WorkerService> Future for Watched<S> {
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.entry.close.get() {
            Close::No => {}
            // Dropping the connection closes the socket.
            Close::Now => return Poll::Ready(Ok(())),
            Close::Graceful if !*this.shut => {
                *this.shut = true;
                this.conn.as_mut().graceful_shutdown();
            }
            Close::Graceful => {}
        }
        let poll = this.conn.as_mut().poll(cx);
        if poll.is_pending() {
            // The task's waker rarely changes: compare before cloning.
            let mut waker = this.entry.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        poll
    }
}

/// The connection's socket as hyper sees it. Shutting down is left to the close
/// that follows at once, which sends the same FIN: `shutdown(2)` first would
/// be one more system call per connection for nothing.
struct Io(TokioIo<TcpStream>);

impl Read for Io {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for Io {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The user's service, counting requests in flight and adding `Connection: close`
/// to every response produced once the drain has started.
struct Tracked<S> {
    inner: S,
    entry: Rc<Entry>,
}

impl<S: WorkerService> Service<Request<Incoming>> for Tracked<S> {
    type Response = Response<S::Body>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.entry.in_flight.set(self.entry.in_flight.get() + 1);
        TrackedFuture {
            inner: self.inner.call(request),
            entry: Rc::clone(&self.entry),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Tracked`], without a box per request.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        entry: Rc<Entry>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        let entry = this.entry;
        let lifecycle = &entry.lifecycle;
        entry.in_flight.set(entry.in_flight.get() - 1);
        entry.idle_since.set(lifecycle.now());
        lifecycle.served_one();
        if lifecycle.is_draining() {
            if let Ok(response) = &mut result {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        Poll::Ready(result)
    }
}
