//! Parked connections: idle HTTP/1.1 keep-alive connections taken out of the
//! runtime until their client sends again.
//!
//! An idle keep-alive connection served by hyper holds hyper's buffers (16 KiB),
//! a task, the runtime's I/O record and an entry in the sweep's table. Freeing
//! the buffers alone is not enough: the small records left between the freed
//! buffers keep about one heap page resident per connection (the figures are in
//! docs/operations.md). So a parked connection keeps only its
//! socket, its service and its place in the open count, in one table, and one
//! epoll instance of its own watches every parked socket; the runtime watches
//! that one descriptor. When a client sends its next request (or closes), its
//! connection leaves the table and a new task serves it, as it would a new
//! connection (without the protocol detection: it speaks HTTP/1.1). A TLS
//! connection is parked too, with its rustls state (see [`Parked::Tls`]).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

use super::io::{Counted, Stream, TlsConn};

/// A parked connection's stream.
pub enum Parked {
    /// Out of the runtime altogether: its socket is watched by the parking only.
    Plain(std::net::TcpStream),
    /// TLS: rustls's state (keys, sequence numbers) must live on, and tokio's
    /// stream cannot be rebuilt around it, so the stream stays registered with
    /// the runtime; hyper's buffers and the task are freed all the same.
    Tls(Box<TlsConn>),
}

impl Parked {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Parked::Plain(stream) => stream.as_fd(),
            Parked::Tls(conn) => conn.stream.get_ref().0.as_fd(),
        }
    }

    /// The stream, back in the runtime.
    pub fn resume(self) -> io::Result<Stream> {
        Ok(match self {
            Parked::Plain(stream) => Stream::Plain(TcpStream::from_std(stream)?),
            Parked::Tls(conn) => Stream::Tls(conn),
        })
    }
}

/// An idle connection out of the runtime.
pub struct Idle<S> {
    pub stream: Parked,
    pub service: S,
    /// Its place in the open count: a parked connection is open.
    pub counted: Counted,
    /// The client's address (the access log's).
    pub client: std::net::SocketAddr,
    /// When it became idle, in housekeeping ticks: the idle limit counts from there.
    pub since: u32,
}

/// Every parked connection of a worker, and the epoll instance that watches them.
pub struct Parking<S> {
    watcher: AsyncFd<Watcher>,
    parked: RefCell<Slab<Idle<S>>>,
}

/// The epoll instance, as the runtime's reactor watches it (readable: some
/// parked socket is).
struct Watcher(Epoll);

impl AsRawFd for Watcher {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

/// At most this many sockets are taken out of the table per `epoll_wait`.
const BATCH: usize = 64;

impl<S> Parking<S> {
    /// Must be called on the worker's runtime (the reactor registers the epoll fd).
    pub fn new() -> io::Result<Parking<S>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // SAFETY: the `Watcher` owns the epoll fd, never replaces it, and closes
        // it only when dropped, which is when the `AsyncFd` is.
        let watcher = unsafe { AsyncFd::register_with_interest(Watcher(epoll), tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Parking {
            watcher,
            parked: RefCell::new(Slab::new()),
        })
    }

    /// Takes `stream` out of the runtime and parks it. An error closes it: it
    /// is idle, so nothing is lost but the connection (a client retries a
    /// request on a keep-alive connection that closes before answering).
    pub fn park(
        &self,
        stream: Stream,
        service: S,
        counted: Counted,
        client: std::net::SocketAddr,
        since: u32,
    ) -> io::Result<()> {
        let stream = match stream {
            Stream::Plain(stream) => Parked::Plain(stream.into_std()?),
            Stream::Tls(conn) => Parked::Tls(conn),
        };
        let mut parked = self.parked.borrow_mut();
        let slot = parked.vacant_entry();
        // Level-triggered: a socket stays ready until it is taken out.
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, slot.key() as u64);
        self.epoll().add(stream.fd(), event)?;
        slot.insert(Idle {
            stream,
            service,
            counted,
            client,
            since,
        });
        Ok(())
    }

    /// The next parked connections whose client sent something (or closed):
    /// out of the table, and back in non-blocking mode for the runtime.
    pub async fn woken(&self) -> Vec<Idle<S>> {
        let mut events = [EpollEvent::empty(); BATCH];
        loop {
            let Ok(mut ready) = self.watcher.readable().await else {
                // The reactor is gone (the worker is exiting): nothing more wakes.
                return std::future::pending().await;
            };
            let n = match self.epoll().wait(&mut events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    crate::log::warn!("cannot wait for parked connections: {err}; closing them");
                    self.parked.borrow_mut().clear();
                    ready.clear_ready();
                    continue;
                }
            };
            if n == 0 {
                ready.clear_ready();
                continue;
            }
            let mut parked = self.parked.borrow_mut();
            let woken = events[..n]
                .iter()
                .filter_map(|event| parked.try_remove(event.data() as usize))
                .filter(|idle| self.epoll().delete(idle.stream.fd()).is_ok())
                .collect();
            return woken;
        }
    }

    /// Closes every parked connection idle for longer than `limit` ticks as of
    /// `now` (see `Connections::sweep` for the rounding). Returns how many.
    pub fn sweep(&self, now: u32, limit: u32) -> usize {
        let mut closed = 0;
        self.parked.borrow_mut().retain(|_, idle| {
            let keep = now.wrapping_sub(idle.since) <= limit;
            if !keep {
                // Before the close: the epoll instance would otherwise watch the
                // socket until every copy of it is closed.
                let _ = self.epoll().delete(idle.stream.fd());
                closed += 1;
            }
            keep
        });
        closed
    }

    /// The drain has started: idle time counts from `now` (see `Connections::start_drain`).
    pub fn start_drain(&self, now: u32) {
        for (_, idle) in self.parked.borrow_mut().iter_mut() {
            idle.since = now;
        }
    }

    fn epoll(&self) -> &Epoll {
        &self.watcher.get_ref().0
    }
}
