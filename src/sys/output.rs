//! The master's own output, the ready line on stdout and its log on stderr:
//! written without waiting and without panicking.
//!
//! The master supervises: a write that blocks (a log pipeline whose reader
//! stalls, a full journald socket) would hold every respawn behind it, and a
//! write that panics (`println!` to a closed pipe) would take the whole
//! server down. So each line is written now or not at all:
//!
//! - to a pipe or a terminal, through an open file description of the
//!   master's own (`/proc/self/fd/N` opened again), made non-blocking: the one
//!   it shares with the commands and the shell stays as it was;
//! - to a pipe the master may not open again (another user's: a container
//!   with a `USER`, `sudo -u`), through a pipe of its own, spliced across with
//!   `SPLICE_F_NONBLOCK`, which never waits whatever the flags of the pipe;
//! - to a terminal it may not open again, only when `poll` says the terminal
//!   takes bytes (a line longer than the room it has left may still wait);
//! - to a socket (journald's stdout stream), with `MSG_DONTWAIT`;
//! - to a file, as it is: a file never waits for a reader.
//!
//! A line that cannot be written at once is dropped and counted; the master
//! logs the count once writing works again. A line cut short (the reader took
//! part of it) is ended with a newline before the next, so that lines are
//! never glued together. A closed stdout (`| head -1`) is noted once, in the
//! log.
//!
//! Workers write their own log lines as before, waiting if they must: a
//! worker's log is part of its work, and nothing waits on a worker but its own
//! clients. ([`in_child`] switches the inherited writer back.)

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::OnceLock;

use tracing_subscriber::fmt::MakeWriter;

/// One of the master's standard streams.
pub struct Output {
    /// The stream as the process was given it (fd 1 or 2).
    given: RawFd,
    /// How the master writes to it without waiting.
    how: How,
    /// In a child: blocking writes to `given`, as any program makes.
    waits: AtomicBool,
    /// The reader is gone for good (`EPIPE`...): nothing more is tried.
    closed: AtomicBool,
    /// Lines not written since the count was last taken.
    dropped: AtomicU64,
    /// The last line was cut short: a newline is owed before the next.
    cut: AtomicBool,
}

/// How the master writes to a standard stream (see the module docs).
#[derive(Debug, Clone, Copy)]
enum How {
    /// `write(2)` to this fd: the master's own non-blocking description, or a
    /// file.
    Write(RawFd),
    /// `send(2)` with `MSG_DONTWAIT` to the stream itself (a socket).
    Send,
    /// Into a pipe of the master's own (read end, write end), spliced into the
    /// stream with `SPLICE_F_NONBLOCK`.
    Splice(RawFd, RawFd),
    /// `write(2)` to the stream itself once `poll` says it can take bytes.
    Poll,
}

/// Why a line was not written.
#[derive(Debug)]
pub enum Unwritten {
    /// The reader did not take it at once.
    Full,
    /// The reader is gone (the first time: why).
    Closed(Option<io::Error>),
}

static STDOUT: OnceLock<Output> = OnceLock::new();
static STDERR: OnceLock<Output> = OnceLock::new();

/// The master's stdout (the ready line).
pub fn stdout() -> &'static Output {
    STDOUT.get_or_init(|| Output::new(libc::STDOUT_FILENO))
}

/// The master's stderr (its log).
pub fn stderr() -> &'static Output {
    STDERR.get_or_init(|| Output::new(libc::STDERR_FILENO))
}

/// In a forked child, before anything else: its log lines go to stderr as it
/// was given, waiting if they must, and the master's own descriptions are
/// closed.
pub fn in_child() {
    for output in [STDOUT.get(), STDERR.get()].into_iter().flatten() {
        output.waits.store(true, Relaxed);
        // The master's own, unused from now on in this process.
        let own = match output.how {
            How::Write(fd) if fd != output.given => vec![fd],
            How::Splice(read, write) => vec![read, write],
            _ => Vec::new(),
        };
        for fd in own {
            let _ = nix::unistd::close(fd);
        }
    }
}

impl Output {
    fn new(given: RawFd) -> Output {
        // SAFETY: a standard stream: std makes sure 0, 1 and 2 are open (on
        // /dev/null if need be) before main.
        let stream = unsafe { std::os::fd::BorrowedFd::borrow_raw(given) };
        let how = match nix::sys::stat::fstat(stream).map(|stat| stat.st_mode & libc::S_IFMT) {
            Ok(libc::S_IFSOCK) => How::Send,
            Ok(kind @ (libc::S_IFIFO | libc::S_IFCHR)) => match (reopened(given), kind) {
                (Some(own), _) => How::Write(own),
                (None, libc::S_IFIFO) => relay().map_or(How::Poll, |(read, write)| How::Splice(read, write)),
                (None, _) => How::Poll,
            },
            _ => How::Write(given),
        };
        Output {
            given,
            how,
            waits: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            cut: AtomicBool::new(false),
        }
    }

    /// Writes `bytes` whole, now, or drops them (counted).
    pub fn write(&self, bytes: &[u8]) -> Result<(), Unwritten> {
        if self.waits.load(Relaxed) {
            return io::Write::write_all(&mut Waiting(self.given), bytes).map_err(|err| Unwritten::Closed(Some(err)));
        }
        if self.closed.load(Relaxed) {
            self.dropped.fetch_add(1, Relaxed);
            return Err(Unwritten::Closed(None));
        }
        if self.cut.load(Relaxed) {
            match self.write_all_now(b"\n") {
                Ok(1) => self.cut.store(false, Relaxed),
                Ok(_) => {
                    self.dropped.fetch_add(1, Relaxed);
                    return Err(Unwritten::Full);
                }
                Err(err) => return Err(self.unwritten(err)),
            }
        }
        match self.write_all_now(bytes) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => {
                // Part of it, or none: the rest is dropped.
                self.cut.store(n > 0, Relaxed);
                self.dropped.fetch_add(1, Relaxed);
                Err(Unwritten::Full)
            }
            Err(err) => Err(self.unwritten(err)),
        }
    }

    /// A write that failed for good.
    fn unwritten(&self, err: io::Error) -> Unwritten {
        self.dropped.fetch_add(1, Relaxed);
        self.closed.store(true, Relaxed);
        Unwritten::Closed(Some(err))
    }

    /// Writes as much of `bytes` as the reader takes now: how much (less than
    /// all: it takes no more now), or an error other than that.
    fn write_all_now(&self, mut bytes: &[u8]) -> io::Result<usize> {
        let all = bytes.len();
        while !bytes.is_empty() {
            match self.write_now(bytes) {
                Ok(0) => break,
                Ok(n) => bytes = &bytes[n..],
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            }
        }
        Ok(all - bytes.len())
    }

    fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        let n = match self.how {
            How::Write(fd) => sys_write(fd, bytes),
            // SAFETY: `given` is a standard stream, open for the process's life;
            // the buffer is valid for its length.
            How::Send => unsafe {
                libc::send(
                    self.given,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            },
            How::Poll => {
                let mut poll = [libc::pollfd {
                    fd: self.given,
                    events: libc::POLLOUT,
                    revents: 0,
                }];
                // SAFETY: one valid pollfd; a timeout of 0 never waits.
                let ready = unsafe { libc::poll(poll.as_mut_ptr(), 1, 0) };
                if ready < 1 || poll[0].revents & libc::POLLOUT == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                sys_write(self.given, bytes)
            }
            How::Splice(read, write) => return splice_now(read, write, self.given, bytes),
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Lines dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Relaxed)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }
}

/// `write(2)`, to a standard stream or to one of this module's descriptors.
fn sys_write(fd: RawFd, bytes: &[u8]) -> isize {
    // SAFETY: `fd` is a standard stream, or the master's own description of
    // one; either is open for the process's life (the master's are closed only
    // in children, which write to the standard stream instead); the buffer is
    // valid for its length.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

/// Moves `bytes` into the pipe `to` through the master's own pipe (`read`,
/// `write`), without waiting on `to`; what `to` did not take is read back out
/// of the master's pipe, which is left empty.
fn splice_now(read: RawFd, write: RawFd, to: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // The master's pipe is non-blocking and empty: a line of up to its size
    // goes in whole, or not at all.
    let queued = usize::try_from(sys_write(write, &bytes[..bytes.len().min(RELAY_SIZE)])).unwrap_or(0);
    let mut moved = 0;
    while moved < queued {
        // SAFETY: both ends are open pipes; no offsets (pipes have none).
        let n = unsafe {
            libc::splice(
                read,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                queued - moved,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        match usize::try_from(n) {
            Ok(0) => break,
            Ok(n) => moved += n,
            Err(_) => {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => return Err(err),
                }
            }
        }
    }
    // What `to` did not take stays in the master's pipe: out with it.
    let mut scratch = [0u8; 4096];
    let mut left = queued - moved;
    while left > 0 {
        // SAFETY: `read` is the master's own pipe; the buffer is valid for its length.
        let n = unsafe { libc::read(read, scratch.as_mut_ptr().cast(), scratch.len().min(left)) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => left -= n,
            _ => break,
        }
    }
    Ok(moved)
}

/// The master's own pipe for [`How::Splice`]: its size, the longest line it
/// writes whole.
const RELAY_SIZE: usize = 64 << 10;

/// A non-blocking, close-on-exec pipe: (read end, write end).
fn relay() -> Option<(RawFd, RawFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    Some((read.into_raw_fd(), write.into_raw_fd()))
}

/// The same pipe or terminal as `fd`, through a new open file description
/// that is the master's alone, non-blocking. (A socket cannot be opened so; a
/// pipe and a terminal can.)
fn reopened(fd: RawFd) -> Option<RawFd> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{fd}"))
        .ok()?;
    Some(file.into_raw_fd())
}

/// Blocking writes to a standard stream (a child's).
struct Waiting(RawFd);

impl io::Write for Waiting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match usize::try_from(sys_write(self.0, buf)) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::WouldBlock {
                        return Err(err);
                    }
                    // Someone made the stream non-blocking: wait as a blocking
                    // write would.
                    let mut poll = [libc::pollfd {
                        fd: self.0,
                        events: libc::POLLOUT,
                        revents: 0,
                    }];
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(poll.as_mut_ptr(), 1, -1) };
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Each log event, one line, written through [`Output::write`]: what cannot be
/// written is counted, never an error for the subscriber (which would print it
/// to stderr, and panic if stderr is closed).
pub struct Line(&'static Output);

impl io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for &'static Output {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(self)
    }
}
