//! Flags and the config file → a validated [`Config`]. Nothing downstream
//! re-validates.
//!
//! Three layers, later ones win: the defaults, the TOML file (`--config`), the
//! flags actually given on the command line. One [`Settings`] struct is both the
//! flag set and the file schema, so every flag has a key of the same name
//! (`--graceful-timeout` ↔ `graceful_timeout`) and they cannot drift apart.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use serde::{Deserialize, Deserializer};

/// How the workers share the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// One SO_REUSEPORT socket per slot, all bound by the master; the kernel
    /// spreads connections by a hash of the 4-tuple; no shared accept queue.
    Reuseport,
    /// One socket inherited by every worker (a single accept queue; simpler,
    /// but unbalanced under load).
    Shared,
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
    /// Its name, as the flag takes it (`reuseport`, `shared`).
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Reuseport => "reuseport",
            Balance::Shared => "shared",
        }
    }
}

/// Everything the master and its workers need, validated.
///
/// From the command line ([`Config::from_args`]), or built in code: what the
/// program sets is its own choice, which a reload (HUP) keeps over the config
/// file.
///
/// ```no_run
/// let mut config = prefork_server::Config::default();
/// config.addr = "127.0.0.1:8080".parse().expect("an address");
/// config.workers = std::num::NonZeroUsize::new(4).expect("not 0");
/// config.graceful_timeout = std::time::Duration::from_secs(10);
/// prefork_server::run(config).expect("the server ran");
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the ready line says which).
    pub addr: SocketAddr,
    /// Number of worker slots.
    pub workers: NonZeroUsize,
    /// How the workers share the port.
    pub balance: Balance,
    /// `listen(2)` backlog of each socket (capped by `net.core.somaxconn`).
    pub backlog: u32,
    /// How long a draining worker may take before it is killed.
    pub graceful_timeout: Duration,
    /// On TERM/INT, how long readiness (`/readyz`) fails while everything keeps
    /// serving, before the drain: the time a load balancer takes to notice.
    pub shutdown_delay: Duration,
    /// The header read timeout: a client must send a full request head within it,
    /// and a keep-alive connection may stay idle for at most this long (enforced by
    /// the worker's housekeeping sweep, to within its 250 ms tick).
    pub header_read_timeout: Duration,
    /// The longest a request body may go without a byte arriving, while its
    /// request is in flight (nginx's `client_body_timeout`).
    pub body_read_timeout: Duration,
    /// The longest a response may go without a write making progress: a client
    /// that stopped reading is closed; a slow reader is served to the end
    /// (nginx's `send_timeout`).
    pub send_timeout: Duration,
    /// HTTP/2: streams a client may have open at once on one connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: the largest header list a request may send, in bytes.
    pub h2_max_header_list_size: u32,
    /// The most detailed level the server's own log writes.
    pub log_level: tracing::Level,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// `--log-file`: the server's own log goes there instead of stderr.
    pub log_file: Option<PathBuf>,
    /// `--access-log`: one line per response; `-` is stderr; `None`: off.
    pub access_log: Option<PathBuf>,
    /// `--access-log-format`.
    pub access_log_format: AccessLogFormat,
    /// Slots replaced at a time by a reload (HUP).
    pub reload_batch: NonZeroUsize,
    /// A new worker that is not ready within this aborts the reload.
    pub ready_timeout: Duration,
    /// The binary USR2 starts (default: the one this process was started from).
    pub upgrade_binary: Option<PathBuf>,
    /// A new master not ready within this is stopped, and this one keeps serving.
    pub upgrade_timeout: Duration,
    /// Written with the master's pid once it is ready; follows the live master
    /// across upgrades. One that cannot be written stops the start (exit 1).
    pub pid_file: Option<PathBuf>,
    /// A worker that has served this many requests is replaced (0: never).
    pub max_requests: u64,
    /// Adds 0..=this to each worker's `max_requests`, so they are not all due at once.
    pub max_requests_jitter: u64,
    /// A worker whose runtime has not beaten its heartbeat for this long is killed
    /// and replaced; zero: never.
    pub timeout: Duration,
    /// A worker whose resident memory exceeds this many bytes is recycled.
    pub max_worker_memory: Option<u64>,
    /// Where the workers serve `/status`, `/metrics` and the health checks (off when `None`).
    pub admin: Option<SocketAddr>,
    /// Open connections per worker beyond which it stops accepting until one
    /// closes (nginx's `worker_connections`); `None`: no limit.
    pub max_connections: Option<NonZeroUsize>,
    /// A request declaring a larger body gets 413 without reaching the service.
    pub max_body_size: Option<u64>,
    /// The user the workers run as (the master stays as it was started, to
    /// bind on reload); `None`: the master's.
    pub user: Option<String>,
    /// The group the workers run as; `None`: the user's own group, or the master's.
    pub group: Option<String>,
    /// Exec mode: the program and its arguments every slot runs, its socket as
    /// fd 3; `None`: the workers serve the Rust app. Never empty.
    pub command: Option<Vec<String>>,
    /// Exec mode: when a worker counts as ready.
    pub exec_ready: ExecReady,
    /// Exec mode: what asks a worker to stop gracefully.
    pub stop_signal: StopSignal,
    /// Exec mode: `TCP_NODELAY` on the command's socket (systemd's `NoDelay=`).
    pub exec_nodelay: bool,
    /// Exec mode: the command's socket non-blocking (systemd's `NonBlocking=`).
    pub exec_nonblocking: bool,
    /// The config file, re-read on HUP. Without one, a HUP re-applies this
    /// config as it is (and still replaces every worker).
    pub file: Option<PathBuf>,
    /// The flags given on the command line: they override the file on every reload.
    flags: Settings,
    /// Every setting as loaded: what the program changed since (a field it set
    /// in code) is its own choice, which a reload keeps over the file and flags.
    loaded: Settings,
}

/// A config file or value that cannot be used; the message names the key.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The serving sockets this config asks for.
    pub(crate) fn wanted_sockets(&self) -> crate::sys::listener::Wanted {
        crate::sys::listener::Wanted {
            addr: self.addr,
            balance: self.balance,
            slots: self.workers.get(),
            backlog: self.backlog,
        }
    }

    /// Parses the process's arguments (the server's flags, nothing else) and
    /// reads `--config`. On a usage error or a bad config file prints the reason
    /// and exits 2, before anything is bound: call it only where that is what
    /// you want (a `main`). To embed the flags in your own command line, flatten
    /// [`ServerFlags`] into it and call [`Config::from_flags`].
    pub fn from_args() -> Config {
        let flags = OnlyServerFlags::try_parse()
            .unwrap_or_else(|err| ServerFlags::exit_on(err))
            .flags;
        Config::from_flags(flags).unwrap_or_else(|err| {
            // Not `eprintln!`, which panics on a closed stderr: exit 2 says it.
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("{}: {err}\n", program_name()));
            std::process::exit(2)
        })
    }

    /// Parses `args` (the first one is the program name) and reads `--config`.
    pub fn try_from_args<I, T>(args: I) -> Result<Config, Box<dyn std::error::Error>>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let flags = OnlyServerFlags::try_parse_from(args)?.flags;
        Ok(Config::from_flags(flags)?)
    }

    /// The config the flags (or their `PREFORK_*` variables) and their
    /// `--config` file describe. `PORT` and `WEB_CONCURRENCY`, as Heroku, Cloud
    /// Run, gunicorn and Puma read them, stand for `--port` and `--workers`
    /// where neither the flag nor its `PREFORK_` variable is given.
    pub fn from_flags(flags: ServerFlags) -> Result<Config, ConfigError> {
        let mut settings = flags.settings;
        if settings.port.is_none() {
            settings.port = from_env("PORT", |text| text.parse::<u16>().map_err(|err| err.to_string()))?;
        }
        if settings.workers.is_none() {
            settings.workers = from_env("WEB_CONCURRENCY", |text| match text.parse::<u16>() {
                Ok(workers @ 1..=4096) => Ok(workers),
                _ => Err("not a number of workers from 1 to 4096".into()),
            })?;
        }
        Config::load(flags.config, settings)
    }

    /// The config for a reload (HUP): the file re-read, under the same
    /// command-line flags, with every setting the program changed in code kept.
    pub fn reload(&self) -> Result<Config, ConfigError> {
        let chosen = self.as_settings().changed_from(&self.loaded);
        Config::load(self.file.clone(), self.flags.clone().overlay(chosen))
    }

    /// Records every setting as loaded (see `loaded`).
    fn with_loaded(mut self) -> Config {
        self.loaded = self.as_settings();
        self
    }

    /// Every setting of this config, as a layer.
    fn as_settings(&self) -> Settings {
        Settings {
            host: Some(self.addr.ip()),
            port: Some(self.addr.port()),
            workers: u16::try_from(self.workers.get()).ok(),
            balance: Some(self.balance),
            backlog: Some(self.backlog),
            graceful_timeout: Some(self.graceful_timeout),
            shutdown_delay: Some(self.shutdown_delay),
            header_read_timeout: Some(self.header_read_timeout),
            body_read_timeout: Some(self.body_read_timeout),
            send_timeout: Some(self.send_timeout),
            h2_max_concurrent_streams: Some(self.h2_max_concurrent_streams),
            h2_max_header_list_size: Some(self.h2_max_header_list_size),
            log_level: Some(self.log_level),
            log_format: Some(self.log_format),
            log_file: self.log_file.clone(),
            access_log: self.access_log.clone(),
            access_log_format: Some(self.access_log_format),
            reload_batch: u16::try_from(self.reload_batch.get()).ok(),
            ready_timeout: Some(self.ready_timeout),
            upgrade_binary: self.upgrade_binary.clone(),
            upgrade_timeout: Some(self.upgrade_timeout),
            pid_file: self.pid_file.clone(),
            max_requests: Some(self.max_requests),
            max_requests_jitter: Some(self.max_requests_jitter),
            timeout: Some(self.timeout),
            max_worker_memory: self.max_worker_memory,
            admin: self.admin,
            admin_allow_remote: self.admin.map(|admin| !admin.ip().is_loopback()),
            max_connections: self.max_connections.and_then(|n| u32::try_from(n.get()).ok()),
            max_body_size: self.max_body_size,
            user: self.user.clone(),
            group: self.group.clone(),
            exec_ready: Some(self.exec_ready),
            stop_signal: Some(self.stop_signal),
            exec_nodelay: Some(self.exec_nodelay),
            exec_nonblocking: Some(self.exec_nonblocking),
            command: self.command.clone(),
        }
    }

    fn load(file: Option<PathBuf>, flags: Settings) -> Result<Config, ConfigError> {
        let from_file = match &file {
            Some(path) => Settings::read(path)?,
            None => Settings::default(),
        };
        // Flags were validated by the parser: a bad value here came from the file.
        let named = |err: ConfigError| match &file {
            Some(path) => ConfigError(format!("{}: {err}", path.display())),
            None => err,
        };
        from_file
            .overlay(flags.clone())
            .resolve(file.clone(), flags)
            .map_err(named)
    }
}

/// The environment variable `name`, parsed; an error names the variable.
fn from_env<T>(name: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<Option<T>, ConfigError> {
    let Some(text) = std::env::var_os(name) else {
        return Ok(None);
    };
    let text = text.to_string_lossy();
    parse(text.trim())
        .map(Some)
        .map_err(|why| ConfigError(format!("environment variable {name}='{text}': {why}")))
}

/// The name this program was started as, for messages.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| Some(Path::new(&arg0).file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "prefork-server".into())
}

impl Default for Config {
    fn default() -> Config {
        Settings::default()
            .resolve(None, Settings::default())
            .expect("the defaults are valid")
    }
}

/// The server's flags, to flatten into a program's own command line
/// (`#[command(flatten)] server: prefork_server::ServerFlags`), then
/// [`Config::from_flags`].
#[derive(Debug, Clone, Args)]
pub struct ServerFlags {
    /// TOML file with any of the settings below (same names, with `_` for `-`);
    /// flags given on the command line override it. Re-read on HUP.
    #[arg(long, env = "PREFORK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(flatten)]
    settings: Settings,
}

/// Where a running server can be reached, as its settings say: what a control
/// command (`prefork-server reload`, `status`) needs, and nothing else.
#[derive(Debug, Clone, Default)]
pub struct Located {
    /// Where the running master wrote its pid (`pid_file`).
    pub pid_file: Option<PathBuf>,
    /// Its admin listener (`admin`).
    pub admin: Option<SocketAddr>,
    /// The config file these came from, if any.
    pub file: Option<PathBuf>,
}

impl ServerFlags {
    /// Reads `file` as the config file, as `--config FILE` would.
    pub fn set_config_file(&mut self, file: PathBuf) {
        self.config = Some(file);
    }

    /// `pid_file` and `admin` from these flags (and their `PREFORK_*`
    /// variables) over the config file, without judging the other settings:
    /// a control command must not refuse what the running server accepted
    /// (an `admin` on all interfaces with `--admin-allow-remote`, say).
    pub fn locate(&self) -> Result<Located, ConfigError> {
        let from_file = match &self.config {
            Some(path) => Settings::read(path)?,
            None => Settings::default(),
        };
        let settings = from_file.overlay(self.settings.clone());
        Ok(Located {
            pid_file: settings.pid_file,
            admin: settings.admin,
            file: self.config.clone(),
        })
    }

    /// Prints a usage error from parsing a command line that holds these flags,
    /// followed, for a value that came from a `PREFORK_*` variable rather than
    /// the command line (clap names only the flag), by a line that says so; then
    /// exits with clap's code (2).
    pub fn exit_on(err: clap::Error) -> ! {
        let note = ServerFlags::environment_note(&err);
        let _ = err.print();
        if let Some(note) = note {
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("{note}\n"));
        }
        std::process::exit(err.exit_code())
    }

    fn environment_note(err: &clap::Error) -> Option<String> {
        let arg = err.get(clap::error::ContextKind::InvalidArg)?.to_string();
        let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
        let variable = format!("PREFORK_{}", long.replace('-', "_").to_uppercase());
        let on_command_line =
            std::env::args().any(|given| given == format!("--{long}") || given.starts_with(&format!("--{long}=")));
        (!on_command_line && std::env::var_os(&variable).is_some())
            .then(|| format!("note: the value came from the environment variable {variable}"))
    }
}

/// A command line with the server's flags and nothing else (`Config::from_args`).
#[derive(Debug, Parser)]
#[command(version, after_help = crate::sys::signals::HELP_TABLE)]
struct OnlyServerFlags {
    #[command(flatten)]
    flags: ServerFlags,
}

/// One layer of settings: every field optional. Both the flags and the file.
#[derive(Debug, Default, Clone, PartialEq, Args, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Address to listen on, IPv4 or IPv6 (e.g. 127.0.0.1, ::1, ::) [default: 0.0.0.0]
    #[arg(long, env = "PREFORK_HOST", value_parser = parse_host)]
    #[serde(default, deserialize_with = "parsed")]
    host: Option<IpAddr>,

    /// TCP port; 0 picks a free one (the ready line says which) [default: 8000]
    #[arg(long, env = "PREFORK_PORT")]
    port: Option<u16>,

    /// Number of workers, 1 to 4096 [default: the number of CPUs this process may use]
    #[arg(long, env = "PREFORK_WORKERS", value_parser = clap::value_parser!(u16).range(1..=4096))]
    workers: Option<u16>,

    /// How the workers share the port [default: reuseport]
    #[arg(long, env = "PREFORK_BALANCE", value_enum)]
    balance: Option<Balance>,

    /// listen(2) backlog of each socket (the kernel caps it at net.core.somaxconn) [default: 1024]
    #[arg(long, env = "PREFORK_BACKLOG", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    backlog: Option<u32>,

    /// On stop, how long workers may drain before they are killed (e.g. 30, 30s, 500ms, 2m) [default: 30s]
    #[arg(long, env = "PREFORK_GRACEFUL_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    graceful_timeout: Option<Duration>,

    /// On TERM/INT, fail /readyz and keep serving this long before the drain, so a load balancer takes the server out first (a second TERM skips it) [default: 0]
    #[arg(long, env = "PREFORK_SHUTDOWN_DELAY", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    shutdown_delay: Option<Duration>,

    /// Time a client has to send a request head; also the keep-alive idle limit [default: 30s]
    #[arg(long, env = "PREFORK_HEADER_READ_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    header_read_timeout: Option<Duration>,

    /// Time a request body may go without a byte arriving, while its handler waits for it [default: 30s]
    #[arg(long, env = "PREFORK_BODY_READ_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    body_read_timeout: Option<Duration>,

    /// Time a response may go without a write making progress (a client that stopped reading) [default: 30s]
    #[arg(long, env = "PREFORK_SEND_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    send_timeout: Option<Duration>,

    /// HTTP/2: streams a client may have open at once on one connection [default: 128]
    #[arg(long, env = "PREFORK_H2_MAX_CONCURRENT_STREAMS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    h2_max_concurrent_streams: Option<u32>,

    /// HTTP/2: the largest header list a request may send (e.g. 64KiB) [default: 64KiB]
    #[arg(long, env = "PREFORK_H2_MAX_HEADER_LIST_SIZE", value_name = "SIZE", value_parser = parse_header_list_size)]
    #[serde(default, deserialize_with = "header_list_size")]
    h2_max_header_list_size: Option<u32>,

    /// Log level: error, warn, info, debug or trace [default: info]
    #[arg(long, env = "PREFORK_LOG_LEVEL")]
    #[serde(default, deserialize_with = "parsed")]
    log_level: Option<tracing::Level>,

    /// The server's own log: text or json (one object per line) [default: text]
    #[arg(long, env = "PREFORK_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,

    /// Write the server's own log to this file instead of stderr (reopened on USR1)
    #[arg(long, env = "PREFORK_LOG_FILE", value_name = "FILE")]
    log_file: Option<PathBuf>,

    /// Write one line per response to this file, or - for stderr (reopened on USR1) [default: off]
    #[arg(long, env = "PREFORK_ACCESS_LOG", value_name = "FILE")]
    access_log: Option<PathBuf>,

    /// The access log's lines: combined (nginx's, plus duration in µs and pid) or json [default: combined]
    #[arg(long, env = "PREFORK_ACCESS_LOG_FORMAT", value_enum)]
    access_log_format: Option<AccessLogFormat>,

    /// On HUP, how many slots are replaced at a time [default: 1]
    #[arg(long, env = "PREFORK_RELOAD_BATCH", value_parser = clap::value_parser!(u16).range(1..))]
    reload_batch: Option<u16>,

    /// A worker not ready within this is a boot failure; on HUP it aborts the reload [default: 30s]
    #[arg(long, env = "PREFORK_READY_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    ready_timeout: Option<Duration>,

    /// On USR2, the binary to start as the new master [default: the path this one was started from]
    #[arg(long, env = "PREFORK_UPGRADE_BINARY", value_name = "PATH")]
    upgrade_binary: Option<PathBuf>,

    /// On USR2, a new master not ready within this is stopped; this one keeps serving [default: 60s]
    #[arg(long, env = "PREFORK_UPGRADE_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    upgrade_timeout: Option<Duration>,

    /// Write the master's pid here once it is ready (and the new master's after an upgrade); one that cannot be written stops the start (exit 1)
    #[arg(long, env = "PREFORK_PID_FILE", value_name = "FILE")]
    pid_file: Option<PathBuf>,

    /// Replace a worker after it has served this many requests (new one ready first) [default: 0 = never]
    #[arg(long, env = "PREFORK_MAX_REQUESTS", value_name = "N")]
    max_requests: Option<u64>,

    /// Add a random 0..=J to each worker's --max-requests, so they are not replaced together [default: 0]
    #[arg(long, env = "PREFORK_MAX_REQUESTS_JITTER", value_name = "J")]
    max_requests_jitter: Option<u64>,

    /// Kill and replace a ready worker whose event loop has been stuck this long (0: never) [default: 30s]
    #[arg(long, env = "PREFORK_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,

    /// Recycle a worker whose resident memory exceeds this (e.g. 512MiB, 2GiB, 100MB) [default: no limit]
    #[arg(long, env = "PREFORK_MAX_WORKER_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, deserialize_with = "size")]
    max_worker_memory: Option<u64>,

    /// Serve /status (JSON), /metrics, /readyz, /livez and /healthz on this address, from the workers (e.g. 127.0.0.1:9100) [default: off]
    #[arg(long, env = "PREFORK_ADMIN", value_name = "ADDR", value_parser = parse_socket_addr)]
    #[serde(default, deserialize_with = "parsed")]
    admin: Option<SocketAddr>,

    /// Allow --admin on an address other hosts can reach (it is refused otherwise)
    #[arg(
        long,
        env = "PREFORK_ADMIN_ALLOW_REMOTE",
        num_args = 0,
        default_missing_value = "true"
    )]
    admin_allow_remote: Option<bool>,

    /// Open connections per worker beyond which it stops accepting until one closes; the rest wait in the kernel's queue (nginx's worker_connections)
    #[arg(long, env = "PREFORK_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,

    /// A request declaring a body larger than this (Content-Length: 1m, 10MiB...) gets 413 without reaching the service [default: no limit]
    #[arg(long, env = "PREFORK_MAX_BODY_SIZE", value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, deserialize_with = "size")]
    max_body_size: Option<u64>,

    /// Run the workers as this user (the master, started as root to bind, stays root to bind on reload)
    #[arg(long, env = "PREFORK_USER", value_name = "USER")]
    user: Option<String>,

    /// Run the workers in this group [default: the user's group]
    #[arg(long, env = "PREFORK_GROUP", value_name = "GROUP")]
    group: Option<String>,

    /// Exec mode: when a worker counts as ready: accepting (once it, or a process it started, waits on its socket), notify (once it says READY=1) or exec (at once) [default: accepting]
    #[arg(long, env = "PREFORK_EXEC_READY", value_enum)]
    exec_ready: Option<ExecReady>,

    /// Exec mode: the signal that asks a worker to stop gracefully: TERM, INT, QUIT, HUP, USR1, USR2 or WINCH [default: TERM]
    #[arg(long, env = "PREFORK_STOP_SIGNAL", value_name = "SIGNAL")]
    #[serde(default, deserialize_with = "parsed")]
    stop_signal: Option<StopSignal>,

    /// Exec mode: TCP_NODELAY on the command's socket, so a reply written in two parts is not held for the client's delayed ACK (systemd's NoDelay=) [default: true]
    #[arg(long, env = "PREFORK_EXEC_NODELAY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    exec_nodelay: Option<bool>,

    /// Exec mode: hand the command its socket non-blocking; by default it is blocking, as systemd hands it (NonBlocking=) [default: false]
    #[arg(long, env = "PREFORK_EXEC_NONBLOCKING", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    exec_nonblocking: Option<bool>,

    /// Exec mode: every slot runs this command, its socket as fd 3 with LISTEN_FDS=1, as systemd's socket activation passes it (e.g. -- python3 app.py)
    #[arg(last = true, value_name = "PROGRAM")]
    command: Option<Vec<String>>,
}

/// Calls `$callback!(args..., every field of Settings)`: the one list of the
/// settings that the layer operations below are written over.
macro_rules! with_setting_fields {
    ($callback:ident!($($args:tt)*)) => {
        $callback!(
            $($args)* host, port, workers, balance, backlog, graceful_timeout, shutdown_delay, header_read_timeout,
            body_read_timeout, send_timeout, h2_max_concurrent_streams, h2_max_header_list_size,
            log_level, log_format, log_file, access_log, access_log_format, reload_batch, ready_timeout, upgrade_binary, upgrade_timeout, pid_file,
            max_requests, max_requests_jitter, timeout, max_worker_memory, admin, admin_allow_remote,
            max_connections, max_body_size, user, group, exec_ready, stop_signal, exec_nodelay, exec_nonblocking, command
        )
    };
}

/// `low` with every value `high` sets replaced.
macro_rules! overlay_fields {
    ($low:ident, $high:ident, $($field:ident),*) => {
        Settings { $($field: $high.$field.or($low.$field)),* }
    };
}

/// The values of `new` that differ from `base`.
macro_rules! changed_fields {
    ($new:ident, $base:ident, $($field:ident),*) => {
        Settings { $($field: if $new.$field != $base.$field { $new.$field } else { None }),* }
    };
}

impl Settings {
    fn read(path: &Path) -> Result<Settings, ConfigError> {
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

    /// The values of `self` that differ from `base`.
    fn changed_from(self, base: &Settings) -> Settings {
        let new = self;
        with_setting_fields!(changed_fields!(new, base,))
    }

    /// `self` with every value `high` sets replaced.
    fn overlay(self, high: Settings) -> Settings {
        let low = self;
        with_setting_fields!(overlay_fields!(low, high,))
    }

    /// Fills the defaults and checks what the flag parser checks for flags (a file
    /// value has not been through it).
    fn resolve(self, file: Option<PathBuf>, flags: Settings) -> Result<Config, ConfigError> {
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

/// `IP:PORT` (`127.0.0.1:9100`, `[::1]:9100`); host names are not looked up.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "'{text}' is not an IP:PORT address (use e.g. 127.0.0.1:9100 or [::1]:9100; host names are not looked up)"
        )
    })
}

/// An IP address, with or without the brackets of `[::1]`.
fn parse_host(text: &str) -> Result<IpAddr, String> {
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    bare.parse()
        .map_err(|_| format!("'{text}' is not an IP address (use e.g. 0.0.0.0, 127.0.0.1, ::1)"))
}

/// The lowest `--max-worker-memory`. A worker of the default app idles at about
/// 2.3 MiB resident and a small app on tokio and hyper at 3 to 6 MiB: a limit
/// under that would be exceeded by every fresh worker, and each replacement would
/// be recycled in turn, forever.
pub(crate) const MIN_WORKER_MEMORY: u64 = 8 << 20;

/// The longest duration any setting takes. A deadline is `now + duration`:
/// beyond what `Instant` can hold that addition would overflow, and a timeout of
/// more than a year is a typo, not a wish.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `duration`, unless it is longer than [`MAX_DURATION`].
fn at_most_a_year(duration: Duration, text: &str) -> Result<Duration, String> {
    if duration > MAX_DURATION {
        return Err(format!("'{text}' is longer than a year, the most any timeout may be"));
    }
    Ok(duration)
}

/// `30` (a bare number is seconds), or what humantime reads as users type it:
/// `30s`, `500ms`, `1m30s`, `2h`, `1.5s`; at most a year.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<f64>() {
        Ok(seconds) => Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range"))?,
        Err(_) => humantime::parse_duration(text)
            .map_err(|err| format!("'{text}' is not a duration ({err}; use e.g. 30, 30s, 500ms, 1m30s, 2h)"))?,
    };
    at_most_a_year(duration, text)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be greater than 0".into()),
        duration => Ok(duration),
    }
}

/// What bytesize reads as users type it (`512MiB`, `1.5GiB`, `100MB`, `512mb`,
/// `1048576` bytes); a unit letter alone (`64K`, `8m`, `2G`) is binary, as in
/// nginx (`client_max_body_size 1m` is 1 MiB).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let binary = text
        .strip_suffix(['k', 'K', 'm', 'M', 'g', 'G'])
        .filter(|number| number.trim_end().parse::<f64>().is_ok())
        .map(|number| format!("{number}{}iB", &text[number.len()..].to_ascii_uppercase()));
    let bytes = binary
        .as_deref()
        .unwrap_or(text)
        .parse::<bytesize::ByteSize>()
        .map_err(|err| format!("'{text}' is not a size ({err}; use e.g. 512MiB, 1.5GiB, 100MB, 64K)"))?
        .as_u64();
    match bytes {
        0 => Err("must be greater than 0".into()),
        bytes => Ok(bytes),
    }
}

/// An HTTP/2 header list limit: a size (`64KiB`) from 1 KiB to 16 MiB.
fn parse_header_list_size(text: &str) -> Result<u32, String> {
    header_list_bytes(parse_size(text)?).map_err(|why| format!("'{text}' {why}"))
}

/// `bytes` as an HTTP/2 header list limit, if it is from 1 KiB to 16 MiB.
fn header_list_bytes(bytes: u64) -> Result<u32, &'static str> {
    match u32::try_from(bytes) {
        Ok(bytes) if (1 << 10..=16 << 20).contains(&bytes) => Ok(bytes),
        _ => Err("is not between 1KiB and 16MiB"),
    }
}

/// A file header list limit: bytes as a number, or a string like the flag.
fn header_list_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let bytes = size(deserializer)?.unwrap_or_default();
    header_list_bytes(bytes)
        .map(Some)
        .map_err(|why| serde::de::Error::custom(format!("{bytes} {why}")))
}

/// A file size: bytes as a number, or a string like the flag (`"512MiB"`).
fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    let parsed = match Raw::deserialize(deserializer)? {
        Raw::Bytes(bytes) => Ok(bytes),
        Raw::Text(text) => parse_size(&text),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

/// A file value given as a string, parsed like the flag (`host = "::1"`, `log_level = "debug"`).
fn parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(&text);
    bare.parse()
        .map(Some)
        .map_err(|err| serde::de::Error::custom(format!("'{text}': {err}")))
}

/// A file duration: seconds as a number, or a string like the flag (`"500ms"`).
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }
    let parsed = match Raw::deserialize(deserializer)? {
        Raw::Seconds(seconds) => Duration::try_from_secs_f64(seconds)
            .map_err(|err| format!("{seconds}: {err}"))
            .and_then(|duration| at_most_a_year(duration, &seconds.to_string())),
        Raw::Text(text) => parse_duration(&text),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, Box<dyn std::error::Error>> {
        Config::try_from_args(std::iter::once("prefork-server").chain(args.iter().copied()))
    }

    fn file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("prefork-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.addr, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(config.balance, Balance::Reuseport);
        assert_eq!(config.backlog, 1024);
        assert_eq!(config.graceful_timeout, Duration::from_secs(30));
        assert_eq!(config.workers, std::thread::available_parallelism().unwrap());
        assert_eq!(config.reload_batch.get(), 1);
    }

    #[test]
    fn hosts_v4_v6_and_bracketed() {
        assert_eq!(
            parse(&["--host", "::1", "--port", "0"]).unwrap().addr,
            "[::1]:0".parse().unwrap()
        );
        assert_eq!(parse(&["--host", "[::]"]).unwrap().addr, "[::]:8000".parse().unwrap());
        assert!(parse(&["--host", "localhost:80"]).is_err());
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            &["--workers", "0"][..],
            &["--port", "70000"],
            &["--bogus"],
            &["--balance", "rr"],
        ] {
            let err = OnlyServerFlags::try_parse_from(std::iter::once("prefork-server").chain(args.iter().copied()))
                .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        // As users type them.
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2 min").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_positive_duration("0").is_err());
        // Past what a deadline (`Instant + duration`) can hold: refused, not a panic on TERM.
        assert!(parse_duration("366d").is_err());
        let err = parse(&["--graceful-timeout", "10000000000000000000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than a year"), "{err}");
        assert!(parse(&["--upgrade-timeout", "600000m"]).is_err());
        assert_eq!(
            parse(&["--graceful-timeout", "525600m"]).unwrap().graceful_timeout,
            MAX_DURATION
        );
    }

    #[test]
    fn a_memory_limit_below_a_booting_worker_is_refused() {
        let err = parse(&["--max-worker-memory", "1"]).unwrap_err().to_string();
        assert!(
            err.starts_with("max_worker_memory:") && err.contains("below the 8 MiB"),
            "{err}"
        );
        assert!(parse(&["--max-worker-memory", "8MiB"]).is_ok());
    }

    #[test]
    fn the_admin_listener_stays_on_loopback_unless_allowed() {
        assert_eq!(
            parse(&["--admin", "127.0.0.1:9100"]).unwrap().admin,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        let err = parse(&["--admin", "0.0.0.0:9100"]).unwrap_err().to_string();
        assert!(err.contains("--admin-allow-remote"), "{err}");
        assert!(parse(&["--admin", "0.0.0.0:9100", "--admin-allow-remote"]).is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        // As users type them; a unit letter alone is binary, as in nginx.
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("512mb").unwrap(), 512_000_000);
        assert_eq!(parse_size("8m").unwrap(), 8 << 20);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
    }

    #[test]
    fn the_file_sets_values_and_flags_override_it() {
        let path = file(
            "layers",
            "host = \"127.0.0.1\"\nport = 9000\nworkers = 3\nbalance = \"shared\"\n\
             graceful_timeout = \"500ms\"\nready_timeout = 5\nlog_level = \"debug\"\n",
        );
        let path_arg = path.to_str().unwrap();
        let config = parse(&["--config", path_arg, "--port", "9001"]).unwrap();
        assert_eq!(
            config.addr,
            "127.0.0.1:9001".parse().unwrap(),
            "the flag wins over the file"
        );
        assert_eq!(config.workers.get(), 3);
        assert_eq!(config.balance, Balance::Shared);
        assert_eq!(config.graceful_timeout, Duration::from_millis(500));
        assert_eq!(config.ready_timeout, Duration::from_secs(5));
        assert_eq!(config.log_level, tracing::Level::DEBUG);

        std::fs::write(&path, "workers = 5\nport = 1\n").unwrap();
        let reloaded = config.reload().unwrap();
        assert_eq!(reloaded.workers.get(), 5, "reload re-reads the file");
        assert_eq!(reloaded.addr.port(), 9001, "and keeps the command line on top");
    }

    #[test]
    // Field by field, as a program outside the crate must (the struct has private fields).
    #[allow(clippy::field_reassign_with_default)]
    fn a_reload_keeps_what_the_program_set_in_code() {
        let mut config = Config::default();
        config.addr = "127.0.0.1:8937".parse().unwrap();
        config.workers = NonZeroUsize::new(3).unwrap();
        let reloaded = config.reload().unwrap();
        assert_eq!(reloaded.addr, config.addr, "no file: nothing reverts to the defaults");
        assert_eq!(reloaded.workers.get(), 3);

        // With a file: the file's changes apply, the program's choices stay on top.
        let path = file("code", "workers = 2\nport = 9100\n");
        let mut config = parse(&["--config", path.to_str().unwrap()]).unwrap();
        config.addr.set_ip("127.0.0.1".parse().unwrap());
        std::fs::write(&path, "workers = 5\nport = 9100\n").unwrap();
        let reloaded = config.reload().unwrap();
        assert_eq!(reloaded.workers.get(), 5, "the file is re-read");
        assert_eq!(
            reloaded.addr,
            "127.0.0.1:9100".parse().unwrap(),
            "the host chosen in code stays"
        );
        assert_eq!(
            reloaded.reload().unwrap().addr,
            reloaded.addr,
            "and on the reload after"
        );
    }

    #[test]
    fn file_errors_name_the_key() {
        let cases = [
            ("prot = 80\n", "unknown field `prot`"),
            ("port = 70000\n", "port"),
            ("workers = 0\n", "workers: must be at least 1"),
            ("graceful_timeout = \"soon\"\n", "not a duration"),
            ("balance = \"roundrobin\"\n", "balance"),
            ("host = \"example.com\"\n", "host"),
            ("timeout = \"200ms\"\n", "timeout: must be 0 (off) or at least 1s"),
            ("graceful_timeout = 1e19\n", "longer than a year"),
            ("send_timeout = \"0\"\n", "send_timeout"),
        ];
        for (i, (text, expected)) in cases.iter().enumerate() {
            let path = file(&format!("bad{i}"), text);
            let err = parse(&["--config", path.to_str().unwrap()]).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.starts_with(path.to_str().unwrap()), "names the file: {err}");
        }
        let err = parse(&["--config", "/nonexistent/prefork.toml"])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read /nonexistent/prefork.toml"), "{err}");
    }
}
