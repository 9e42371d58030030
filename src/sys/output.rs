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
//! - to a socket (journald's stdout stream), with `MSG_DONTWAIT`;
//! - to a file, as it is: a file never waits for a reader.
//!
//! A line that cannot be written at once is dropped and counted; the master
//! logs the count once writing works again. A closed stdout (`| head -1`) is
//! noted once, in the log.
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
    /// Where the master writes: its own non-blocking description of the same
    /// pipe or terminal, or `given` itself.
    fd: RawFd,
    /// `given` is a socket: written with `MSG_DONTWAIT`.
    socket: bool,
    /// In a child: blocking writes to `given`, as any program makes.
    waits: AtomicBool,
    /// The reader is gone for good (`EPIPE`...): nothing more is tried.
    closed: AtomicBool,
    /// Lines not written since the count was last taken.
    dropped: AtomicU64,
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
        if output.fd != output.given {
            // The master's, unused from now on in this process.
            let _ = nix::unistd::close(output.fd);
        }
    }
}

impl Output {
    fn new(given: RawFd) -> Output {
        // SAFETY: a standard stream: std makes sure 0, 1 and 2 are open (on
        // /dev/null if need be) before main.
        let stream = unsafe { std::os::fd::BorrowedFd::borrow_raw(given) };
        let (fd, socket) = match nix::sys::stat::fstat(stream) {
            Ok(stat) => match stat.st_mode & libc::S_IFMT {
                libc::S_IFSOCK => (given, true),
                libc::S_IFIFO | libc::S_IFCHR => (reopened(given).unwrap_or(given), false),
                _ => (given, false),
            },
            Err(_) => (given, false),
        };
        Output {
            given,
            fd,
            socket,
            waits: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    /// Writes `bytes` whole, now, or drops them (counted).
    pub fn write(&self, mut bytes: &[u8]) -> Result<(), Unwritten> {
        if self.waits.load(Relaxed) {
            return io::Write::write_all(&mut Waiting(self.given), bytes).map_err(|err| Unwritten::Closed(Some(err)));
        }
        if self.closed.load(Relaxed) {
            self.dropped.fetch_add(1, Relaxed);
            return Err(Unwritten::Closed(None));
        }
        while !bytes.is_empty() {
            match self.write_now(bytes) {
                Ok(0) => break,
                Ok(n) => bytes = &bytes[n..],
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.dropped.fetch_add(1, Relaxed);
                    if err.kind() == io::ErrorKind::WouldBlock {
                        return Err(Unwritten::Full);
                    }
                    self.closed.store(true, Relaxed);
                    return Err(Unwritten::Closed(Some(err)));
                }
            }
        }
        Ok(())
    }

    fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        // SAFETY: `fd` is open for this process's life (a standard stream, or the
        // master's own description of it, closed only in children, which do not
        // come here), and the buffer is valid for its length.
        let n = unsafe {
            match self.socket {
                true => libc::send(self.fd, bytes.as_ptr().cast(), bytes.len(), flags),
                false => libc::write(self.fd, bytes.as_ptr().cast(), bytes.len()),
            }
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
        // SAFETY: a standard stream, open for the process's life; the buffer is
        // valid for its length.
        let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
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
