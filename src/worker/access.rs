//! The access log (`--access-log`): one line per response, when its body is
//! done (or dropped): the client's address, the time, the method, the target,
//! the protocol, the status, the body bytes sent, the duration in µs and the
//! worker's pid. Each worker keeps its lines in its own buffer and writes them
//! with one `write(2)` at every housekeeping tick (250 ms), when the buffer
//! passes 64 KiB, and at exit; a write to a local file does not hold the event
//! loop for long. USR1 reopens the file (after logrotate renamed it); what was
//! buffered goes to the old file first, so no line is lost.
//!
//! A write that fails (a full disk) loses what was buffered: the first failure
//! says so in the log, the ones after it only count, and the first write that
//! works again says how many lines were lost meanwhile, as one episode.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderValue, REFERER, USER_AGENT};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Uri, Version};

use crate::config::AccessLogFormat;

/// Buffered lines past this size are written at once, not at the next tick.
const FLUSH_AT: usize = 64 << 10;

pub struct AccessLog {
    /// `None`: stderr.
    path: Option<PathBuf>,
    file: RefCell<Option<File>>,
    format: AccessLogFormat,
    buffer: RefCell<Vec<u8>>,
    pid: u32,
    /// The second and its common-log-format time, last formatted.
    clf: RefCell<(u64, String)>,
    /// Lines and bytes lost since writing failed (`None`: it works).
    lost: Cell<Option<(u64, u64)>>,
    /// A failed write cut a line short: a newline is owed.
    cut: Cell<bool>,
}

/// Writes `bytes` with `write` until done or it fails: how many were written,
/// and the failure.
fn write_what_it_takes(bytes: &[u8], write: &mut impl FnMut(&[u8]) -> io::Result<usize>) -> (usize, Option<io::Error>) {
    let mut written = 0;
    while written < bytes.len() {
        match write(&bytes[written..]) {
            Ok(0) => return (written, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return (written, Some(err)),
        }
    }
    (written, None)
}

/// What a response's line needs from its request, taken when the request comes
/// in: clones that only count references (the URI's and the headers' bytes are
/// shared), no copy and no formatting until the line is written.
pub struct Pending {
    started: Instant,
    client: SocketAddr,
    method: Method,
    uri: Uri,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    /// Set when the response head is known.
    pub status: u16,
    /// Counted as the body's frames go out.
    pub bytes: u64,
}

impl Pending {
    #[inline(never)]
    pub fn new<B>(request: &Request<B>, client: SocketAddr) -> Pending {
        Pending {
            started: Instant::now(),
            client,
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            referer: request.headers().get(REFERER).cloned(),
            user_agent: request.headers().get(USER_AGENT).cloned(),
            status: 0,
            bytes: 0,
        }
    }

    /// `--slow-request`: one line in the server's log about this request,
    /// which took `micros` (in worker `slot`).
    #[inline(never)]
    pub fn log_slow(&self, micros: u64, slot: u64) {
        let status = match self.status {
            0 => "no response".to_owned(),
            status => format!("status {status}"),
        };
        crate::log::warn!(
            "slow request: {} {} from {}: {status} in {:.1} ms, worker {slot} (pid {})",
            self.method,
            self.target(),
            self.client,
            micros as f64 / 1000.0,
            std::process::id()
        );
    }

    /// The request target as sent: path and query (or the whole URI, for the
    /// absolute form).
    fn target(&self) -> &str {
        self.uri.path_and_query().map_or("*", PathAndQuery::as_str)
    }
}

impl AccessLog {
    /// `-` is stderr; any other path is opened for appending.
    pub fn open(path: &Path, format: AccessLogFormat) -> io::Result<AccessLog> {
        let path = (path != Path::new("-")).then(|| path.to_owned());
        let file = path.as_deref().map(append).transpose()?;
        Ok(AccessLog {
            path,
            file: RefCell::new(file),
            format,
            buffer: RefCell::new(Vec::with_capacity(FLUSH_AT)),
            pid: std::process::id(),
            clf: RefCell::new((u64::MAX, String::new())),
            lost: Cell::new(None),
            cut: Cell::new(false),
        })
    }

    /// The line of a finished response. Not inlined: the path without an
    /// access log stays as small as it was.
    #[inline(never)]
    pub fn log(&self, done: &Pending) {
        let micros = done.started.elapsed().as_micros() as u64;
        let now = SystemTime::now();
        let mut buffer = self.buffer.borrow_mut();
        match self.format {
            AccessLogFormat::Combined => self.combined(&mut buffer, done, now, micros),
            AccessLogFormat::Json => {
                let text = |value: &Option<HeaderValue>| {
                    value
                        .as_ref()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                };
                let line = serde_json::json!({
                    "time": humantime::format_rfc3339_millis(now).to_string(),
                    "client": done.client.to_string(),
                    "method": done.method.as_str(),
                    "target": done.target(),
                    "protocol": protocol(done.version),
                    "status": done.status,
                    "bytes": done.bytes,
                    "duration_us": micros,
                    "referer": text(&done.referer),
                    "user_agent": text(&done.user_agent),
                    "pid": self.pid,
                });
                let _ = serde_json::to_writer(&mut *buffer, &line);
                buffer.push(b'\n');
            }
        }
        if buffer.len() >= FLUSH_AT {
            drop(buffer);
            self.flush();
        }
    }

    /// `client - - [time] "METHOD target PROTOCOL" status bytes "referer"
    /// "user agent" µs pid`, written byte by byte (this runs on every request):
    /// the time is formatted once a second, numbers with `itoa`.
    fn combined(&self, buffer: &mut Vec<u8>, done: &Pending, now: SystemTime, micros: u64) {
        let mut number = itoa::Buffer::new();
        match done.client.ip() {
            std::net::IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        buffer.push(b'.');
                    }
                    buffer.extend_from_slice(number.format(octet).as_bytes());
                }
            }
            ip => {
                let _ = write!(buffer, "{ip}");
            }
        }
        buffer.extend_from_slice(b" - - [");
        buffer.extend_from_slice(self.clf_now(now).as_bytes());
        buffer.extend_from_slice(b"] \"");
        buffer.extend_from_slice(done.method.as_str().as_bytes());
        buffer.push(b' ');
        escaped(buffer, done.target().as_bytes());
        buffer.push(b' ');
        buffer.extend_from_slice(protocol(done.version).as_bytes());
        buffer.extend_from_slice(b"\" ");
        buffer.extend_from_slice(number.format(done.status).as_bytes());
        buffer.push(b' ');
        buffer.extend_from_slice(number.format(done.bytes).as_bytes());
        for header in [&done.referer, &done.user_agent] {
            buffer.extend_from_slice(b" \"");
            match header {
                Some(value) => escaped(buffer, value.as_bytes()),
                None => buffer.push(b'-'),
            }
            buffer.push(b'"');
        }
        buffer.push(b' ');
        buffer.extend_from_slice(number.format(micros).as_bytes());
        buffer.push(b' ');
        buffer.extend_from_slice(number.format(self.pid).as_bytes());
        buffer.push(b'\n');
    }

    /// The common log format's time of `now`, formatted again only when the
    /// second changes.
    fn clf_now(&self, now: SystemTime) -> std::cell::Ref<'_, str> {
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        if self.clf.borrow().0 != second {
            *self.clf.borrow_mut() = (second, clf_time(now));
        }
        std::cell::Ref::map(self.clf.borrow(), |(_, text)| text.as_str())
    }

    /// Writes what is buffered.
    pub fn flush(&self) {
        let mut buffer = self.buffer.borrow_mut();
        if buffer.is_empty() {
            return;
        }
        let mut file = self.file.borrow_mut();
        let mut write = |bytes: &[u8]| match file.as_mut() {
            Some(file) => file.write(bytes),
            None => io::stderr().write(bytes),
        };
        // A line the last failure cut short is ended first: the next line
        // starts on a line of its own.
        if self.cut.get() && write(b"\n").is_ok_and(|n| n == 1) {
            self.cut.set(false);
        }
        let (written, failed) = match self.cut.get() {
            true => (0, Some(io::Error::other("the last line is still cut short"))),
            false => write_what_it_takes(&buffer, &mut write),
        };
        match (failed, self.lost.get()) {
            (None, None) => {}
            (None, Some((lines, bytes))) => {
                self.lost.set(None);
                crate::log::warn!(
                    "the access log is written again; {lines} lines ({bytes} bytes) were lost while it could not be"
                );
            }
            (Some(err), lost) => {
                // Lines not written whole are lost (one cut short included).
                let unwritten = &buffer[written..];
                let lines = unwritten.iter().filter(|byte| **byte == b'\n').count() as u64;
                let whole = buffer[..written]
                    .iter()
                    .rposition(|byte| *byte == b'\n')
                    .map_or(0, |at| at + 1);
                if written > whole {
                    self.cut.set(true);
                }
                let bytes = (buffer.len() - whole) as u64;
                match lost {
                    None => {
                        self.lost.set(Some((lines, bytes)));
                        crate::log::warn!(
                            "cannot write the access log: {err}; its lines are lost until it can be written again (counted)"
                        );
                    }
                    Some((before, before_bytes)) => self.lost.set(Some((before + lines, before_bytes + bytes))),
                }
            }
        }
        buffer.clear();
    }

    /// USR1: what is buffered goes to the current file, then the path is opened
    /// again (the file now there, after a rotation).
    pub fn reopen(&self) -> io::Result<()> {
        self.flush();
        if let Some(path) = &self.path {
            *self.file.borrow_mut() = Some(append(path)?);
        }
        Ok(())
    }
}

/// At the worker's exit (its runtime and connections dropped): the last lines.
impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// `HTTP/1.1`, as the request line says it.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// `bytes` in a quoted field: `"` and `\` escaped, and control bytes as `\xNN`
/// (nginx's escaping), so that a line cannot be forged or broken.
fn escaped(buffer: &mut Vec<u8>, bytes: &[u8]) {
    for &byte in bytes {
        match byte {
            b'"' | b'\\' => buffer.extend_from_slice(&[b'\\', byte]),
            0x20..=0x7e => buffer.push(byte),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                buffer.extend_from_slice(&[b'\\', b'x', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
            }
        }
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `22/Nov/2026:23:59:01 +0000`, the common log format's time, in UTC.
fn clf_time(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Year, month (1-12) and day of the `days`-th day since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_log_format_time_is_utc() {
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        // 2026-11-22T23:59:01Z
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_795_391_941);
        assert_eq!(clf_time(at), "22/Nov/2026:23:59:01 +0000");
        // A leap day.
        let at = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(clf_time(at), "29/Feb/2000:00:00:00 +0000");
    }
}
