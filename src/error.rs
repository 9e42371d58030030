//! The master's errors. Each says what was being attempted, so `main` prints it
//! once, as is, and exits 1.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Why the master could not start or had to halt. More reasons may be added.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A listener could not be created, bound or put in listen state.
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// The signal handlers or their self-pipe could not be installed.
    Signals(io::Error),
    /// The master could not block signals around a fork.
    SignalMask(io::Error),
    /// `/proc/self/status` could not be read before a fork.
    ThreadCount(io::Error),
    /// The master found more than one thread where it must fork.
    Multithreaded {
        /// How many it has (`Threads:` of `/proc/self/status`).
        threads: usize,
    },
    /// `fork(2)` failed.
    Fork(io::Error),
    /// The master could not create the pipe to a worker.
    Channel(io::Error),
    /// `poll(2)` failed in the master loop.
    Poll(io::Error),
    /// Every worker of the first generation exited before it was ready.
    BootFailed {
        /// The first worker's reason, as it gave it (or how it ended).
        cause: String,
    },
    /// The sockets an old master handed over (hot upgrade) cannot be used.
    Handover(io::Error),
    /// The sockets systemd passed (`LISTEN_FDS`) cannot be used.
    Activation(io::Error),
    /// The shared scoreboard could not be mapped.
    Scoreboard(io::Error),
    /// Every scoreboard record is taken (more live workers than it holds).
    ScoreboardFull,
    /// `--user` or `--group` cannot be used: unknown, or the master is not root.
    RunAs {
        /// Which of the two, and why.
        cause: String,
    },
    /// Exec mode: the command cannot be run (not found, not executable).
    Command {
        /// Why not.
        cause: String,
    },
    /// Exec mode: the master's notify socket cannot be bound.
    NotifySocket(io::Error),
    /// `--log-file` cannot be opened.
    LogFile {
        /// The file.
        path: std::path::PathBuf,
        /// What opening it said.
        source: io::Error,
    },
    /// A TLS file (`--tls-cert`, `--tls-key`, ...) cannot be used.
    Tls {
        /// Which file, and why.
        cause: String,
    },
    /// `--pid-file` cannot be written: control commands would find no master.
    PidFile {
        /// The file.
        path: std::path::PathBuf,
        /// What writing it said.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bind { addr, source } => {
                write!(f, "cannot bind {addr}: {}", describe_bind(addr, source))
            }
            Error::Signals(err) => write!(f, "cannot install signal handlers: {err}"),
            Error::SignalMask(err) => write!(f, "cannot block signals around fork: {err}"),
            Error::ThreadCount(err) => {
                write!(f, "cannot count the master's threads before fork: {err}")
            }
            Error::Multithreaded { threads } => write!(
                f,
                "refusing to fork: the master has {threads} threads, and fork without exec is only \
                 sound in a single-threaded process. Start no thread and build no tokio runtime (no \
                 #[tokio::main]) before run_with; async work belongs in the per-worker setup, which \
                 runs on each worker's own runtime"
            ),
            Error::Fork(err) => write!(f, "cannot fork a worker: {err}"),
            Error::Channel(err) => write!(f, "cannot create the pipe to a worker: {err}"),
            Error::Poll(err) => write!(f, "master loop: poll failed: {err}"),
            Error::Command { cause } => write!(f, "cannot run the command: {cause}"),
            Error::Tls { cause } => write!(f, "cannot serve TLS: {cause}"),
            Error::NotifySocket(err) => write!(f, "cannot bind the notify socket for the command: {err}"),
            Error::BootFailed { cause } => write!(f, "every worker failed to boot; {cause}"),
            Error::RunAs { cause } => write!(f, "cannot run the workers as --user/--group asks: {cause}"),
            Error::LogFile { path, source } => write!(f, "cannot open the log file {}: {source}", path.display()),
            Error::PidFile { path, source } => write!(f, "cannot write the pid file {}: {source}", path.display()),
            Error::Handover(err) => write!(f, "cannot take over the old master's sockets: {err}"),
            Error::Scoreboard(err) => write!(f, "cannot map the shared scoreboard: {err}"),
            Error::Activation(err) => write!(f, "cannot use the sockets systemd passed (LISTEN_FDS): {err}"),
            Error::ScoreboardFull => write!(f, "the scoreboard is full: too many live workers"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } | Error::Signals(source) | Error::Channel(source) => Some(source),
            Error::ThreadCount(source) | Error::Handover(source) | Error::Scoreboard(source) => Some(source),
            Error::Activation(source) | Error::LogFile { source, .. } | Error::NotifySocket(source) => Some(source),
            Error::PidFile { source, .. } => Some(source),
            Error::SignalMask(source) | Error::Fork(source) | Error::Poll(source) => Some(source),
            Error::Multithreaded { .. } | Error::BootFailed { .. } | Error::ScoreboardFull | Error::RunAs { .. } => {
                None
            }
            Error::Command { .. } | Error::Tls { .. } => None,
        }
    }
}

/// The reason a bind failed, in the words a user searches for.
fn describe_bind(addr: &SocketAddr, err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::AddrInUse => "address in use".into(),
        io::ErrorKind::AddrNotAvailable => "address not available on this machine".into(),
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".into()
        }
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_errors_name_the_address_and_the_reason() {
        let addr: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        let err = Error::Bind {
            addr,
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert_eq!(err.to_string(), "cannot bind 0.0.0.0:8000: address in use");
        let addr: SocketAddr = "0.0.0.0:80".parse().unwrap();
        let err = Error::Bind {
            addr,
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(err
            .to_string()
            .starts_with("cannot bind 0.0.0.0:80: permission denied (ports below 1024"));
    }
}
