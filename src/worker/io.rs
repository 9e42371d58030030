//! A connection's socket as hyper sees it, and what it stamps for the
//! housekeeping sweep: since when a read or a write has been waiting for the
//! client, and when the connection last became idle.
//!
//! Everything here is `Send` (atomics behind an `Arc`), because the socket can
//! leave hyper: an upgraded connection (a WebSocket) is handed to the service as
//! hyper's `Upgraded`, which requires it. The worker is one thread, so the
//! atomics are never contended; `Relaxed` loads and stores cost what `Cell`s do.
//! The socket also holds the connection's place in the open count, so an
//! upgraded connection counts as open (and keeps a drain waiting, up to
//! `--graceful-timeout`) until the service drops it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::sys::scoreboard::Record;

/// "Not waiting", for the blocked stamps. The clock skips it.
const NONE: u32 = u32::MAX;

/// Housekeeping ticks since the worker started: a clock that costs one load, as
/// precise as the sweep that uses it.
#[derive(Default)]
pub struct Clock(AtomicU32);

impl Clock {
    pub fn now(&self) -> u32 {
        self.0.load(Relaxed)
    }

    /// One housekeeping tick has passed.
    pub fn tick(&self) {
        let next = self.now().wrapping_add(1);
        self.0.store(if next == NONE { 0 } else { next }, Relaxed);
    }
}

/// What the socket and the response futures stamp, in ticks of the [`Clock`].
pub struct Stamps {
    clock: Arc<Clock>,
    /// Since when a read has been waiting for the client ([`NONE`]: it is not).
    read_blocked: AtomicU32,
    /// Since when a write has been waiting for the client ([`NONE`]: it is not).
    write_blocked: AtomicU32,
    /// When the connection last had nothing in flight: accepted, a response
    /// done, or a blocked write of the last response unblocked.
    idle_since: AtomicU32,
}

impl Stamps {
    pub fn new(clock: Arc<Clock>) -> Stamps {
        let now = clock.now();
        Stamps {
            clock,
            read_blocked: AtomicU32::new(NONE),
            write_blocked: AtomicU32::new(NONE),
            idle_since: AtomicU32::new(now),
        }
    }

    pub fn read_blocked(&self) -> Option<u32> {
        Some(self.read_blocked.load(Relaxed)).filter(|since| *since != NONE)
    }

    pub fn write_blocked(&self) -> Option<u32> {
        Some(self.write_blocked.load(Relaxed)).filter(|since| *since != NONE)
    }

    pub fn idle_since(&self) -> u32 {
        self.idle_since.load(Relaxed)
    }

    /// The connection has nothing in flight from now on.
    pub fn idle_now(&self) {
        self.idle_since.store(self.clock.now(), Relaxed);
    }

    /// Stamps `since` when `poll` is the start of a wait, clears it when it is done.
    fn stamp<T>(&self, since: &AtomicU32, poll: &Poll<T>) {
        match (poll.is_pending(), since.load(Relaxed) == NONE) {
            (true, true) => since.store(self.clock.now(), Relaxed),
            (false, false) => since.store(NONE, Relaxed),
            _ => {}
        }
    }

    fn wrote<T>(&self, poll: &Poll<T>) {
        let was_blocked = self.write_blocked.load(Relaxed) != NONE;
        self.stamp(&self.write_blocked, poll);
        if was_blocked && poll.is_ready() {
            // Progress: the idle clock of a finished response starts again here.
            self.idle_now();
        }
    }
}

/// How many connections of this worker are open, upgraded and parked ones
/// included.
pub struct OpenCount {
    open: AtomicUsize,
    closed: Notify,
    /// `--max-connections`: the accept loops wait below it.
    limit: usize,
    /// Woken when a close brings the count back under the limit.
    below_limit: Notify,
    /// Where the master and the status views see it.
    record: &'static Record,
}

impl OpenCount {
    pub fn new(record: &'static Record, limit: Option<std::num::NonZeroUsize>) -> OpenCount {
        OpenCount {
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            limit: limit.map_or(usize::MAX, std::num::NonZeroUsize::get),
            below_limit: Notify::new(),
            record,
        }
    }

    /// Resolves once fewer than `--max-connections` are open (at once, mostly).
    pub async fn below_limit(&self) {
        // The accept loops ask before every accept: below the limit (always,
        // without one) it costs one load.
        while self.get() >= self.limit {
            let freed = self.below_limit.notified();
            if self.get() < self.limit {
                return;
            }
            freed.await;
        }
    }

    pub fn get(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.get() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Counts one more open connection until the guard is dropped.
    pub fn count(self: &Arc<Self>) -> Counted {
        let open = self.open.fetch_add(1, Relaxed) + 1;
        self.record.connections.store(open as u64, Relaxed);
        Counted(Arc::clone(self))
    }
}

/// One open connection in the [`OpenCount`].
pub struct Counted(Arc<OpenCount>);

impl Drop for Counted {
    fn drop(&mut self) {
        let count = &self.0;
        let open = count.open.fetch_sub(1, Relaxed) - 1;
        count.record.connections.store(open as u64, Relaxed);
        if open == 0 {
            count.closed.notify_waiters();
        }
        if open + 1 == count.limit {
            count.below_limit.notify_waiters();
        }
    }
}

/// The socket. Shutting down is left to the close that follows, which sends the
/// same FIN: `shutdown(2)` first would be one more system call per connection
/// for nothing. (An upgraded connection ends its own protocol, a WebSocket close
/// frame for one, before it is dropped.)
pub struct Io {
    inner: TokioIo<TcpStream>,
    /// What the worker read to tell HTTP/2 from HTTP/1, given back first.
    prefix: Bytes,
    stamps: Arc<Stamps>,
    counted: Counted,
}

impl Io {
    pub fn new(stream: TcpStream, prefix: Bytes, stamps: Arc<Stamps>, counted: Counted) -> Io {
        Io {
            inner: TokioIo::new(stream),
            prefix,
            stamps,
            counted,
        }
    }
}

impl Io {
    /// Bytes hyper read but did not use (a next head begun): read first next time.
    pub fn give_back(&mut self, read: Bytes) {
        if !read.is_empty() {
            self.prefix = read;
        }
    }

    pub fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// The socket and its place in the open count (the stamps stay with the
    /// connection's entry; bytes given back are the caller's to check first).
    pub fn into_parts(self) -> (TcpStream, Counted) {
        (self.inner.into_inner(), self.counted)
    }
}

/// Waits until `stream` is readable: true, or false if the socket failed or
/// `closed()` says to give up. `closed` is asked on every wake-up, and
/// `keep_waker` is given the waker, so that whoever decides (the sweep) can
/// wake this.
pub async fn readable(stream: &TcpStream, closed: impl Fn() -> bool, keep_waker: impl Fn(&std::task::Waker)) -> bool {
    std::future::poll_fn(|cx| {
        if closed() {
            return Poll::Ready(false);
        }
        keep_waker(cx.waker());
        stream.poll_read_ready(cx).map(|ready| ready.is_ok())
    })
    .await
}

impl Read for Io {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            if self.prefix.is_empty() {
                // An empty slice of it would keep the whole read buffer alive.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.stamps.stamp(&self.stamps.read_blocked, &poll);
        poll
    }
}

impl Write for Io {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stamps.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stamps.wrote(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
