//! One layer of settings ([`Settings`]): both the flag set (clap) and the file
//! schema (serde), every field optional; the layers' overlay, and their
//! resolution into a [`Config`] with the defaults filled and every value
//! checked.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::kinds::{AccessLogFormat, Balance, ExecReady, LogFormat, StopSignal};
use super::units::{
    duration, header_list_size, parse_duration, parse_header_list_size, parse_host, parse_positive_duration,
    parse_size, parse_socket_addr, parsed, size, MIN_WORKER_MEMORY,
};
use super::{Config, ConfigError};

/// Declares the layer struct and, from its one list of fields, the operations
/// on layers: no other list of the settings to keep in step with it.
macro_rules! layer {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $field_vis:vis $field:ident : Option<$ty:ty>, )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$field_meta])* $field_vis $field: Option<$ty>, )*
        }

        impl $name {
            /// The values of `self` that differ from `base`.
            pub(super) fn changed_from(self, base: &$name) -> $name {
                $name { $( $field: if self.$field != base.$field { self.$field } else { None } ),* }
            }

            /// `self` with every value `high` sets replaced.
            pub(super) fn overlay(self, high: $name) -> $name {
                $name { $( $field: high.$field.or(self.$field) ),* }
            }
        }
    };
}

layer! {
/// One layer of settings: every field optional. Both the flags and the file.
#[derive(Debug, Default, Clone, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Settings {
    /// Address to listen on, IPv4 or IPv6 (e.g. 127.0.0.1, ::1, ::) [default: 0.0.0.0]
    #[arg(long, env = "PREFORK_HOST", value_parser = parse_host)]
    #[serde(default, deserialize_with = "parsed")]
    pub(super) host: Option<IpAddr>,

    /// TCP port; 0 picks a free one (the ready line says which) [default: 8000]
    #[arg(long, env = "PREFORK_PORT")]
    pub(super) port: Option<u16>,

    /// Number of workers, 1 to 4096 [default: the number of CPUs this process may use]
    #[arg(long, env = "PREFORK_WORKERS", value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub(super) workers: Option<u16>,

    /// How the workers share the port [default: reuseport]
    #[arg(long, env = "PREFORK_BALANCE", value_enum)]
    pub(super) balance: Option<Balance>,

    /// listen(2) backlog of each socket (the kernel caps it at net.core.somaxconn) [default: 1024]
    #[arg(long, env = "PREFORK_BACKLOG", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(super) backlog: Option<u32>,

    /// On stop, how long workers may drain before they are killed (e.g. 30, 30s, 500ms, 2m) [default: 30s]
    #[arg(long, env = "PREFORK_GRACEFUL_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub(super) graceful_timeout: Option<Duration>,

    /// On TERM/INT, fail /readyz and keep serving this long before the drain, so a load balancer takes the server out first (a second TERM skips it) [default: 0]
    #[arg(long, env = "PREFORK_SHUTDOWN_DELAY", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub(super) shutdown_delay: Option<Duration>,

    /// Time a client has to send a request head; also the keep-alive idle limit [default: 30s]
    #[arg(long, env = "PREFORK_HEADER_READ_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub(super) header_read_timeout: Option<Duration>,

    /// Time a request body may go without a byte arriving, while its handler waits for it [default: 30s]
    #[arg(long, env = "PREFORK_BODY_READ_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub(super) body_read_timeout: Option<Duration>,

    /// Time a response may go without a write making progress (a client that stopped reading) [default: 30s]
    #[arg(long, env = "PREFORK_SEND_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub(super) send_timeout: Option<Duration>,

    /// HTTP/2: streams a client may have open at once on one connection [default: 128]
    #[arg(long, env = "PREFORK_H2_MAX_CONCURRENT_STREAMS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub(super) h2_max_concurrent_streams: Option<u32>,

    /// HTTP/2: the largest header list a request may send (e.g. 64KiB) [default: 64KiB]
    #[arg(long, env = "PREFORK_H2_MAX_HEADER_LIST_SIZE", value_name = "SIZE", value_parser = parse_header_list_size)]
    #[serde(default, deserialize_with = "header_list_size")]
    pub(super) h2_max_header_list_size: Option<u32>,

    /// Log level: error, warn, info, debug or trace [default: info]
    #[arg(long, env = "PREFORK_LOG_LEVEL")]
    #[serde(default, deserialize_with = "parsed")]
    pub(super) log_level: Option<tracing::Level>,

    /// The server's own log: text or json (one object per line) [default: text]
    #[arg(long, env = "PREFORK_LOG_FORMAT", value_enum)]
    pub(super) log_format: Option<LogFormat>,

    /// Write the server's own log to this file instead of stderr (reopened on USR1)
    #[arg(long, env = "PREFORK_LOG_FILE", value_name = "FILE")]
    pub(super) log_file: Option<PathBuf>,

    /// Write one line per response to this file, or - for stderr (reopened on USR1) [default: off]
    #[arg(long, env = "PREFORK_ACCESS_LOG", value_name = "FILE")]
    pub(super) access_log: Option<PathBuf>,

    /// The access log's lines: combined (nginx's, plus duration in µs and pid) or json [default: combined]
    #[arg(long, env = "PREFORK_ACCESS_LOG_FORMAT", value_enum)]
    pub(super) access_log_format: Option<AccessLogFormat>,

    /// On HUP, how many slots are replaced at a time [default: 1]
    #[arg(long, env = "PREFORK_RELOAD_BATCH", value_parser = clap::value_parser!(u16).range(1..))]
    pub(super) reload_batch: Option<u16>,

    /// A worker not ready within this is a boot failure; on HUP it aborts the reload [default: 30s]
    #[arg(long, env = "PREFORK_READY_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub(super) ready_timeout: Option<Duration>,

    /// On USR2, the binary to start as the new master [default: the path this one was started from]
    #[arg(long, env = "PREFORK_UPGRADE_BINARY", value_name = "PATH")]
    pub(super) upgrade_binary: Option<PathBuf>,

    /// On USR2, a new master not ready within this is stopped; this one keeps serving [default: 60s]
    #[arg(long, env = "PREFORK_UPGRADE_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub(super) upgrade_timeout: Option<Duration>,

    /// Write the master's pid here once it is ready (and the new master's after an upgrade); one that cannot be written stops the start (exit 1)
    #[arg(long, env = "PREFORK_PID_FILE", value_name = "FILE")]
    pub(super) pid_file: Option<PathBuf>,

    /// Replace a worker after it has served this many requests (new one ready first) [default: 0 = never]
    #[arg(long, env = "PREFORK_MAX_REQUESTS", value_name = "N")]
    pub(super) max_requests: Option<u64>,

    /// Add a random 0..=J to each worker's --max-requests, so they are not replaced together [default: 0]
    #[arg(long, env = "PREFORK_MAX_REQUESTS_JITTER", value_name = "J")]
    pub(super) max_requests_jitter: Option<u64>,

    /// Kill and replace a ready worker whose event loop has been stuck this long (0: never) [default: 30s]
    #[arg(long, env = "PREFORK_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub(super) timeout: Option<Duration>,

    /// Recycle a worker whose resident memory exceeds this (e.g. 512MiB, 2GiB, 100MB) [default: no limit]
    #[arg(long, env = "PREFORK_MAX_WORKER_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, deserialize_with = "size")]
    pub(super) max_worker_memory: Option<u64>,

    /// Serve /status (JSON), /metrics, /readyz, /livez and /healthz on this address, from the workers (e.g. 127.0.0.1:9100) [default: off]
    #[arg(long, env = "PREFORK_ADMIN", value_name = "ADDR", value_parser = parse_socket_addr)]
    #[serde(default, deserialize_with = "parsed")]
    pub(super) admin: Option<SocketAddr>,

    /// Allow --admin on an address other hosts can reach (it is refused otherwise)
    #[arg(
        long,
        env = "PREFORK_ADMIN_ALLOW_REMOTE",
        num_args = 0,
        default_missing_value = "true"
    )]
    pub(super) admin_allow_remote: Option<bool>,

    /// Open connections per worker beyond which it stops accepting until one closes; the rest wait in the kernel's queue (nginx's worker_connections)
    #[arg(long, env = "PREFORK_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) max_connections: Option<u32>,

    /// A request declaring a body larger than this (Content-Length: 1m, 10MiB...) gets 413 without reaching the service [default: no limit]
    #[arg(long, env = "PREFORK_MAX_BODY_SIZE", value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, deserialize_with = "size")]
    pub(super) max_body_size: Option<u64>,

    /// Run the workers as this user (the master, started as root to bind, stays root to bind on reload)
    #[arg(long, env = "PREFORK_USER", value_name = "USER")]
    pub(super) user: Option<String>,

    /// Run the workers in this group [default: the user's group]
    #[arg(long, env = "PREFORK_GROUP", value_name = "GROUP")]
    pub(super) group: Option<String>,

    /// Exec mode: when a worker counts as ready: accepting (once it, or a process it started, waits on its socket), notify (once it says READY=1) or exec (at once) [default: accepting]
    #[arg(long, env = "PREFORK_EXEC_READY", value_enum)]
    pub(super) exec_ready: Option<ExecReady>,

    /// Exec mode: the signal that asks a worker to stop gracefully: TERM, INT, QUIT, HUP, USR1, USR2 or WINCH [default: TERM]
    #[arg(long, env = "PREFORK_STOP_SIGNAL", value_name = "SIGNAL")]
    #[serde(default, deserialize_with = "parsed")]
    pub(super) stop_signal: Option<StopSignal>,

    /// Exec mode: TCP_NODELAY on the command's socket, so a reply written in two parts is not held for the client's delayed ACK (systemd's NoDelay=) [default: true]
    #[arg(long, env = "PREFORK_EXEC_NODELAY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub(super) exec_nodelay: Option<bool>,

    /// Exec mode: hand the command its socket non-blocking; by default it is blocking, as systemd hands it (NonBlocking=) [default: false]
    #[arg(long, env = "PREFORK_EXEC_NONBLOCKING", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub(super) exec_nonblocking: Option<bool>,

    /// Exec mode: every slot runs this command, its socket as fd 3 with LISTEN_FDS=1, as systemd's socket activation passes it (e.g. -- python3 app.py)
    #[arg(last = true, value_name = "PROGRAM")]
    pub(super) command: Option<Vec<String>>,
}
}

impl Settings {
    /// The file's settings (if there is a file) under `flags`.
    pub(super) fn layered(file: Option<&Path>, flags: Settings) -> Result<Settings, ConfigError> {
        let from_file = match file {
            Some(path) => Settings::read(path)?,
            None => Settings::default(),
        };
        Ok(from_file.overlay(flags))
    }

    pub(super) fn read(path: &Path) -> Result<Settings, ConfigError> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError(format!("cannot read {shown}: {err}")))?;
        // One line, `file: line N: what`: it also goes into the log on a reload.
        toml::from_str(&text).map_err(|err| {
            let line = err.span().map(|span| text[..span.start].matches('\n').count() + 1);
            let key = |line: usize| {
                text.lines()
                    .nth(line - 1)?
                    .split_once('=')
                    .map(|(key, _)| key.trim().to_owned())
            };
            let at = match line.map(|line| (line, key(line))) {
                Some((line, Some(key))) => format!(" line {line}, `{key}`:"),
                Some((line, None)) => format!(" line {line}:"),
                None => String::new(),
            };
            ConfigError(format!("{shown}:{at} {}", err.message().trim_end()))
        })
    }

    /// Fills the defaults and checks what the flag parser checks for flags (a file
    /// value has not been through it).
    pub(super) fn resolve(self, file: Option<PathBuf>, flags: Settings) -> Result<Config, ConfigError> {
        let bad = |key: &str, why: &str| ConfigError(format!("{key}: {why}"));
        let workers = match self.workers {
            Some(0) => return Err(bad("workers", "must be at least 1")),
            Some(n) if n > 4096 => return Err(bad("workers", "must be at most 4096")),
            Some(n) => NonZeroUsize::new(n.into()).expect("checked above"),
            None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        };
        let backlog = self.backlog.unwrap_or(1024);
        if backlog == 0 {
            return Err(bad("backlog", "must be at least 1"));
        }
        if let Some(admin) = self.admin {
            if !admin.ip().is_loopback() && self.admin_allow_remote != Some(true) {
                let why =
                    format!("{admin} is reachable from other hosts; use a loopback address or --admin-allow-remote");
                return Err(bad("admin", &why));
            }
        }
        let reload_batch = NonZeroUsize::new(self.reload_batch.unwrap_or(1).into())
            .ok_or_else(|| bad("reload_batch", "must be at least 1"))?;
        let positive = |key, value: Option<Duration>| match value {
            Some(Duration::ZERO) => Err(bad(key, "must be greater than 0")),
            other => Ok(other.unwrap_or(Duration::from_secs(30))),
        };
        Ok(Config {
            addr: SocketAddr::new(
                self.host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                self.port.unwrap_or(8000),
            ),
            workers,
            balance: self.balance.unwrap_or(Balance::Reuseport),
            backlog,
            graceful_timeout: self.graceful_timeout.unwrap_or(Duration::from_secs(30)),
            shutdown_delay: self.shutdown_delay.unwrap_or(Duration::ZERO),
            header_read_timeout: positive("header_read_timeout", self.header_read_timeout)?,
            body_read_timeout: positive("body_read_timeout", self.body_read_timeout)?,
            send_timeout: positive("send_timeout", self.send_timeout)?,
            h2_max_concurrent_streams: match self.h2_max_concurrent_streams {
                Some(0) => return Err(bad("h2_max_concurrent_streams", "must be at least 1")),
                other => other.unwrap_or(128),
            },
            h2_max_header_list_size: self.h2_max_header_list_size.unwrap_or(64 << 10),
            log_level: self.log_level.unwrap_or(tracing::Level::INFO),
            log_format: self.log_format.unwrap_or(LogFormat::Text),
            log_file: self.log_file,
            access_log: self.access_log,
            access_log_format: self.access_log_format.unwrap_or(AccessLogFormat::Combined),
            reload_batch,
            ready_timeout: positive("ready_timeout", self.ready_timeout)?,
            upgrade_binary: self.upgrade_binary,
            upgrade_timeout: self.upgrade_timeout.unwrap_or(Duration::from_secs(60)),
            pid_file: self.pid_file,
            max_requests: self.max_requests.unwrap_or(0),
            max_requests_jitter: self.max_requests_jitter.unwrap_or(0),
            timeout: match self.timeout {
                // Workers beat every 250 ms: a shorter limit would kill healthy ones.
                Some(t) if !t.is_zero() && t < Duration::from_secs(1) => {
                    return Err(bad("timeout", "must be 0 (off) or at least 1s"));
                }
                other => other.unwrap_or(Duration::from_secs(30)),
            },
            max_worker_memory: match self.max_worker_memory {
                Some(bytes) if bytes < MIN_WORKER_MEMORY => {
                    let why = format!(
                        "{} MiB is below the {} MiB a worker may use just by booting; recycling could never bring it under",
                        bytes as f64 / (1 << 20) as f64,
                        MIN_WORKER_MEMORY >> 20
                    );
                    return Err(bad("max_worker_memory", &why));
                }
                other => other,
            },
            admin: self.admin,
            max_connections: self.max_connections.and_then(|n| NonZeroUsize::new(n as usize)),
            max_body_size: self.max_body_size,
            user: self.user,
            group: self.group,
            command: match self.command {
                Some(command) if command.first().map_or(true, |program| program.is_empty()) => {
                    return Err(bad("command", "names no program"));
                }
                other => other,
            },
            exec_ready: self.exec_ready.unwrap_or(ExecReady::Accepting),
            stop_signal: self.stop_signal.unwrap_or_default(),
            exec_nodelay: self.exec_nodelay.unwrap_or(true),
            exec_nonblocking: self.exec_nonblocking.unwrap_or(false),
            file,
            flags,
            loaded: Settings::default(),
        }
        .with_loaded())
    }
}
