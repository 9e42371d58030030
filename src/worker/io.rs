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
//!
//! An HTTP/2 connection's socket also reads the frames that pass (see
//! `frames`): a client past its control-frame allowance is answered with
//! `GOAWAY` and the connection ends; and when the worker itself ends the
//! connection (the sweep's close), its last word is a `GOAWAY` naming the last
//! stream it took.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use std::os::fd::AsRawFd;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::server::TlsStream;

use super::frames::{Frames, ENHANCE_YOUR_CALM};
use crate::sys::scoreboard::Record;
use crate::sys::steering::SlotLoad;

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
    /// HTTP/2: when a `DATA` frame was last written (a response making progress).
    data_sent: AtomicU32,
    /// HTTP/2: the `GOAWAY` error code to send as the socket closes ([`NONE`]:
    /// no `GOAWAY` of the worker's own; hyper's, if any, has been sent).
    goaway: AtomicU32,
}

impl Stamps {
    pub fn new(clock: Arc<Clock>) -> Stamps {
        let now = clock.now();
        Stamps {
            clock,
            read_blocked: AtomicU32::new(NONE),
            write_blocked: AtomicU32::new(NONE),
            idle_since: AtomicU32::new(now),
            data_sent: AtomicU32::new(now),
            goaway: AtomicU32::new(NONE),
        }
    }

    /// The housekeeping tick now.
    pub fn now(&self) -> u32 {
        self.clock.now()
    }

    /// HTTP/2: when a `DATA` frame was last written.
    pub fn data_sent(&self) -> u32 {
        self.data_sent.load(Relaxed)
    }

    /// HTTP/2: the connection is to end with a `GOAWAY` of `code` (the first
    /// reason given wins).
    pub fn goaway_on_close(&self, code: u32) {
        let _ = self.goaway.compare_exchange(NONE, code, Relaxed, Relaxed);
    }

    /// The code of the `GOAWAY` the connection is to end with, if any.
    pub fn goaway(&self) -> Option<u32> {
        Some(self.goaway.load(Relaxed)).filter(|code| *code != NONE)
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
    /// `--balance steered`: where the kernel's program sees it.
    steer: Option<&'static SlotLoad>,
}

impl OpenCount {
    pub fn new(
        record: &'static Record,
        steer: Option<&'static SlotLoad>,
        limit: Option<std::num::NonZeroUsize>,
    ) -> OpenCount {
        OpenCount {
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            limit: limit.map_or(usize::MAX, std::num::NonZeroUsize::get),
            below_limit: Notify::new(),
            record,
            steer,
        }
    }

    fn show(&self, open: usize) {
        self.record.connections.store(open as u64, Relaxed);
        if let Some(steer) = self.steer {
            steer.set_connections(open);
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
        self.show(open);
        Counted(Arc::clone(self))
    }
}

/// One open connection in the [`OpenCount`].
pub struct Counted(Arc<OpenCount>);

impl Counted {
    /// Bytes written to the client, counted in the worker's record: once per
    /// write, not per body frame (heads, bodies and HTTP/2's framing alike,
    /// before TLS).
    #[inline]
    fn sent(&self, poll: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = poll {
            self.0.record.traffic.sent(*n as u64);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let count = &self.0;
        let open = count.open.fetch_sub(1, Relaxed) - 1;
        count.show(open);
        if open == 0 {
            count.closed.notify_waiters();
        }
        if open + 1 == count.limit {
            count.below_limit.notify_waiters();
        }
    }
}

/// A connection's byte stream: the socket, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls's connection state is large, and moves with the stream.
    Tls(Box<TlsConn>),
}

/// A TLS connection, and what its handshake settled (every request's
/// [`TlsInfo`](crate::TlsInfo)).
pub struct TlsConn {
    pub stream: TlsStream<TcpStream>,
    pub info: crate::TlsInfo,
}

impl Stream {
    /// The socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(tls) => tls.stream.get_ref().0,
        }
    }

    /// Bytes the worker has read but hyper has not been given: TLS records
    /// already decrypted. (A parked connection must have none: it is woken only
    /// by its socket.)
    pub fn has_buffered(&mut self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls
                .stream
                .get_mut()
                .1
                .process_new_packets()
                .map_or(true, |state| state.plaintext_bytes_to_read() > 0),
        }
    }

    /// Writes `bytes` now if the socket takes them, without waiting: best
    /// effort (a `GOAWAY` as the connection closes). Over TLS, as a record.
    fn send_now(&mut self, bytes: &[u8]) {
        let fd = self.tcp().as_raw_fd();
        // SAFETY: `fd` is this stream's socket, open for the whole call.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let mut socket = NoWait(socket2::SockRef::from(&socket));
        match self {
            Stream::Plain(_) => {
                let _ = io::Write::write(&mut socket, bytes);
            }
            Stream::Tls(tls) => {
                let conn = tls.stream.get_mut().1;
                if io::Write::write_all(&mut conn.writer(), bytes).is_err() {
                    return;
                }
                // The connection ends here: the client hears it from TLS too.
                conn.send_close_notify();
                while conn.wants_write() {
                    if !matches!(conn.write_tls(&mut socket), Ok(n) if n > 0) {
                        return;
                    }
                }
            }
        }
    }
}

/// A socket written without waiting (`MSG_DONTWAIT`) and without `SIGPIPE`.
struct NoWait<'a>(socket2::SockRef<'a>);

impl io::Write for NoWait<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut tls.stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut tls.stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(&mut tls.stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(tls) => tls.stream.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(tls) => Pin::new(&mut tls.stream).poll_flush(cx),
        }
    }

    /// Shutting down a plain socket is left to the close that follows, which
    /// sends the same FIN: `shutdown(2)` first would be one more system call
    /// per connection for nothing. TLS says `close_notify` first (and leaves
    /// the FIN to the close too), so that the client knows the end is the end.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(tls) => {
                // Queued once, however often this is polled (rustls sends one).
                tls.stream.get_mut().1.send_close_notify();
                Pin::new(&mut tls.stream).poll_flush(cx)
            }
        }
    }
}

/// An HTTP/1.1 connection's socket. (An upgraded connection ends its own
/// protocol, a WebSocket close frame for one, before it is dropped.)
pub struct Io {
    inner: TokioIo<Stream>,
    /// What the worker read to tell HTTP/2 from HTTP/1, given back first.
    prefix: BytesMut,
    stamps: Arc<Stamps>,
    counted: Counted,
}

impl Io {
    pub fn new(stream: Stream, prefix: BytesMut, stamps: Arc<Stamps>, counted: Counted) -> Io {
        Io {
            inner: TokioIo::new(stream),
            prefix,
            stamps,
            counted,
        }
    }

    /// Bytes hyper read but did not use (a next head begun): read first next time.
    pub fn give_back(&mut self, read: Bytes) {
        if !read.is_empty() {
            // hyper's read buffer, which nothing else holds once hyper is done
            // with the connection: taken back without a copy (a copy if something did).
            self.prefix = BytesMut::from(read);
        }
    }

    /// Whether something of a next request has been read already: bytes given
    /// back, or TLS records decrypted and waiting.
    pub fn has_begun(&mut self) -> bool {
        !self.prefix.is_empty() || self.inner.inner_mut().has_buffered()
    }

    /// The stream and its place in the open count (the stamps stay with the
    /// connection's entry; bytes given back are the caller's to check first).
    pub fn into_parts(self) -> (Stream, Counted) {
        (self.inner.into_inner(), self.counted)
    }

    /// Gives back what is left of `prefix` (see [`Io::give_back`]), as much
    /// as `buf` takes, and shows it to `seen`; `None` when there is nothing.
    #[inline]
    fn read_prefix<T>(&mut self, buf: &mut ReadBufCursor<'_>, seen: impl FnOnce(&[u8]) -> T) -> Option<T> {
        if self.prefix.is_empty() {
            return None;
        }
        let n = self.prefix.len().min(buf.remaining());
        let given = &self.prefix[..n];
        buf.put_slice(given);
        let seen = seen(given);
        if n == self.prefix.len() {
            // Emptied: an empty slice of it would keep the whole read buffer alive.
            self.prefix = BytesMut::new();
        } else {
            bytes::Buf::advance(&mut self.prefix, n);
        }
        Some(seen)
    }
}

/// An HTTP/2 connection's socket: [`Io`], whose prefix starts with the
/// preface, and the frames that pass through it.
pub struct H2Io {
    io: Io,
    h2: Box<H2>,
}

impl H2Io {
    pub fn new(stream: Stream, prefix: BytesMut, stamps: Arc<Stamps>, counted: Counted) -> H2Io {
        let h2 = H2 {
            frames: Frames::new(stamps.now()),
            stamps: Arc::clone(&stamps),
        };
        H2Io {
            io: Io::new(stream, prefix, stamps, counted),
            h2: Box::new(h2),
        }
    }
}

/// What an HTTP/2 connection's socket keeps of its frames.
struct H2 {
    frames: Frames,
    stamps: Arc<Stamps>,
}

impl H2 {
    /// Bytes read: `Err` (the connection ends) once the client is past its
    /// control-frame allowance.
    fn read(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.frames.read(bytes, self.stamps.now()) {
            Ok(()) => Ok(()),
            Err(flood) => {
                self.stamps.goaway_on_close(ENHANCE_YOUR_CALM);
                Err(io::Error::other(format!(
                    "HTTP/2 flood: {} control frames in one read, with a balance of {}",
                    flood.control, flood.balance
                )))
            }
        }
    }

    /// What was written (the first `n` bytes of `bufs`).
    #[inline(never)]
    fn written_vectored(&mut self, bufs: &[io::IoSlice<'_>], n: usize) {
        let mut left = n;
        let mut data = false;
        for buf in bufs {
            let part = left.min(buf.len());
            data |= self.frames.written(&buf[..part]);
            left -= part;
            if left == 0 {
                break;
            }
        }
        self.sent(data);
    }

    #[inline(never)]
    fn written(&mut self, bytes: &[u8]) {
        let data = self.frames.written(bytes);
        self.sent(data);
    }

    /// Stamps `DATA` written, if `data`.
    fn sent(&self, data: bool) {
        if data {
            self.stamps.data_sent.store(self.stamps.now(), Relaxed);
        }
    }
}

/// The worker's own `GOAWAY`, if it ends the connection and the stream is
/// between two frames: best effort, without waiting (a socket that cannot take
/// 17 bytes now has a client that is not reading).
impl Drop for H2Io {
    fn drop(&mut self) {
        let Some(frame) = self.h2.stamps.goaway().and_then(|code| self.h2.frames.goaway(code)) else {
            return;
        };
        self.io.inner.inner_mut().send_now(&frame);
    }
}

impl H2Io {
    /// Reads into `buf`, and passes what was read through the frame watch
    /// before hyper sees it.
    fn poll_read_frames(&mut self, cx: &mut Context<'_>, mut buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        let h2 = &mut self.h2;
        if let Some(watched) = self.io.read_prefix(&mut buf, |given| h2.read(given)) {
            watched?;
            return Poll::Ready(Ok(()));
        }
        // SAFETY: as hyper-util's `TokioIo` reads: a tokio `ReadBuf` over the
        // cursor's unfilled part, into which the stream writes only initialised
        // bytes; the cursor is advanced over exactly the bytes it filled.
        let mut read = tokio::io::ReadBuf::uninit(unsafe { buf.as_mut() });
        let poll = AsyncRead::poll_read(Pin::new(self.io.inner.inner_mut()), cx, &mut read);
        self.io.stamps.stamp(&self.io.stamps.read_blocked, &poll);
        match poll {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let filled = read.filled().len();
        self.h2.read(read.filled())?;
        // SAFETY: the stream filled `filled` bytes of the cursor (see above).
        unsafe { buf.advance(filled) };
        Poll::Ready(Ok(()))
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
        let this = &mut *self;
        if this.read_prefix(&mut buf, |_| ()).is_some() {
            return Poll::Ready(Ok(()));
        }
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.stamps.stamp(&this.stamps.read_blocked, &poll);
        poll
    }
}

impl Write for Io {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stamps.wrote(&poll);
        self.counted.sent(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stamps.wrote(&poll);
        self.counted.sent(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A socket has nothing to flush; TLS may have records still to write,
        // and a flush that waits for the client is a write that waits.
        if let Stream::Plain(_) = self.inner.inner() {
            return Poll::Ready(Ok(()));
        }
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.stamps.wrote(&poll);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Read for H2Io {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        self.poll_read_frames(cx, buf)
    }
}

impl Write for H2Io {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.h2.written(&buf[..*n]);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &poll {
            this.h2.written_vectored(bufs, *n);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
