//! The server's own log destination when it is a file (`--log-file`): one per
//! process, reopened on USR1 (after logrotate has renamed it, say), so that
//! lines written after the reopen go to the new file and none is lost. Writes
//! go through a mutex: the master is single-threaded, but a worker's service
//! may log from its blocking pool.
//!
//! The file is opened non-blocking: that changes nothing for a file, and a
//! path that names a pipe (a FIFO, `/dev/stderr`) is then never waited on, in
//! the master as on its stderr (see `output`): a line the pipe does not take
//! at once is dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

static LOG_FILE: OnceLock<LogFile> = OnceLock::new();

/// Opens `path` for appending as this process's log file (once).
pub fn open(path: &Path) -> io::Result<&'static LogFile> {
    let file = append(path)?;
    Ok(LOG_FILE.get_or_init(|| LogFile {
        path: path.to_owned(),
        file: Mutex::new(file),
    }))
}

/// Opens the log file's path again, if there is one: later lines go to the file
/// now at that path. The old file is closed once the new one is open.
pub fn reopen() -> io::Result<()> {
    let Some(log) = LOG_FILE.get() else { return Ok(()) };
    let file = append(&log.path)?;
    *log.lock() = file;
    Ok(())
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// The log file's fd, if there is one: a child forked from the master keeps it.
pub fn raw_fd() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    LOG_FILE.get().map(|log| log.lock().as_raw_fd())
}

/// Lines a pipe named by `--log-file` did not take at once.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped since the last call.
pub fn take_dropped() -> u64 {
    DROPPED.swap(0, Relaxed)
}

impl LogFile {
    /// A poisoned lock only means a writer panicked mid-line: keep logging.
    fn lock(&self) -> MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One event's writes, under the lock.
pub struct Locked<'a>(MutexGuard<'a, File>);

impl Write for Locked<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                DROPPED.fetch_add(1, Relaxed);
                Ok(buf.len())
            }
            written => written,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for &'static LogFile {
    type Writer = Locked<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Locked(self.lock())
    }
}
