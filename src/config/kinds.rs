//! The settings that are a choice among a few: how the port is shared, the
//! log formats, exec mode's readiness and stop signal.

use std::str::FromStr;

use clap::ValueEnum;
use serde::Deserialize;

/// How the workers share the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// One SO_REUSEPORT socket per slot, and a program in the kernel that
    /// sends each new connection to the less loaded of two ready slots; a
    /// stalled worker's socket is also lent to a sibling, as with `lending`.
    /// Where the kernel does not allow the program (no CAP_BPF, a kernel
    /// before 5.5), `lending` alone, with the reason in the log.
    Steered,
    /// One SO_REUSEPORT socket per slot, placed by the kernel's hash; the
    /// socket of a worker that stalls while connections wait on it is lent to
    /// a sibling until it beats again. Needs no privilege.
    Lending,
    /// One SO_REUSEPORT socket per slot, all bound by the master; the kernel
    /// spreads connections by a hash of the 4-tuple, blind to load; no shared
    /// accept queue.
    Reuseport,
    /// One socket inherited by every worker (a single accept queue; simpler,
    /// but unbalanced under load).
    Shared,
}

/// With `--tls-client-ca`: whether a client must show a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsClientAuth {
    /// A client without a certificate the CAs issued fails the handshake.
    Required,
    /// A client may show none (and is served); one it shows must verify.
    Optional,
}

/// How the access log writes a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// nginx's and Apache's `combined`, then the duration in µs and the worker's pid.
    Combined,
    /// One JSON object per line.
    Json,
}

/// How the server's own log writes a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-11-22T23:59:01.123Z  INFO master: ...`
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`).
    Json,
}

/// Exec mode: when a worker running the command counts as ready (a reload
/// waits for it before the old worker drains).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecReady {
    /// Once the program (or a process it started) waits for connections on its
    /// socket; a `READY=1` before that does not count (gunicorn's arbiter says
    /// it before its workers have imported the app).
    Accepting,
    /// At `READY=1` over `NOTIFY_SOCKET` only: for programs that say it once
    /// they truly serve.
    Notify,
    /// As soon as the command has been executed.
    Exec,
}

/// Exec mode: the signal that asks a worker running the command to stop
/// gracefully (it is killed at `--graceful-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSignal(nix::sys::signal::Signal);

impl StopSignal {
    /// The signals a program may be asked to stop with.
    const ALLOWED: [nix::sys::signal::Signal; 7] = {
        use nix::sys::signal::Signal::*;
        [SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH]
    };

    /// Its number, as `kill(2)` takes it.
    pub fn number(self) -> i32 {
        self.0 as i32
    }

    /// Its name, `SIGTERM`.
    pub fn name(self) -> &'static str {
        self.0.as_str()
    }

    pub(crate) fn signal(self) -> nix::sys::signal::Signal {
        self.0
    }
}

impl Default for StopSignal {
    fn default() -> StopSignal {
        StopSignal(nix::sys::signal::Signal::SIGTERM)
    }
}

impl FromStr for StopSignal {
    type Err = String;

    /// `TERM`, `SIGTERM` or `term`.
    fn from_str(text: &str) -> Result<StopSignal, String> {
        let upper = text.trim().to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        StopSignal::ALLOWED
            .into_iter()
            .find(|signal| signal.as_str() == name)
            .map(StopSignal)
            .ok_or_else(|| format!("'{text}' is not a stop signal (use TERM, INT, QUIT, HUP, USR1, USR2 or WINCH)"))
    }
}

impl Balance {
    /// Its name, as the flag takes it (`steered`, `reuseport`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Steered => "steered",
            Balance::Lending => "lending",
            Balance::Reuseport => "reuseport",
            Balance::Shared => "shared",
        }
    }

    /// The sockets it needs: one per slot, or one for all.
    pub(crate) fn layout(self) -> crate::sys::listener::Layout {
        match self {
            Balance::Shared => crate::sys::listener::Layout::Shared,
            _ => crate::sys::listener::Layout::PerSlot,
        }
    }

    /// Whether a stalled worker's socket is lent to a sibling.
    pub(crate) fn lends(self) -> bool {
        matches!(self, Balance::Steered | Balance::Lending)
    }
}
