//! The server's own log destination when it is a file (`--log-file`): one per
//! process, reopened on USR1 (after logrotate has renamed it, say), so that
//! lines written after the reopen go to the new file and none is lost. Writes
//! go through a mutex: the master is single-threaded, but a worker's service
//! may log from its blocking pool.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
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
    OpenOptions::new().create(true).append(true).open(path)
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
        self.0.write(buf)
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
