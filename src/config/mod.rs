//! Flags and the config file → a validated [`Config`]. Nothing downstream
//! re-validates.
//!
//! Three layers, later ones win: the defaults, the TOML file (`--config`), the
//! flags actually given on the command line. One [`Settings`] struct is both the
//! flag set and the file schema, so every flag has a key of the same name
//! (`--graceful-timeout` ↔ `graceful_timeout`) and they cannot drift apart.
//!
//! - `kinds.rs`     the settings that are a choice among a few (enums)
//! - `units.rs`     hosts, durations and sizes as users type them; serde adapters
//! - `settings.rs`  one layer: the flags and the file schema; overlay; resolve
//! - `flags.rs`     `ServerFlags` for a program's own command line; `Located`

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

mod flags;
mod kinds;
mod settings;
#[cfg(test)]
mod tests;
mod units;

pub(crate) use flags::OnlyServerFlags;
pub use flags::{Located, ServerFlags};
pub use kinds::{AccessLogFormat, Balance, ExecReady, LogFormat, StopSignal};
use settings::Settings;
pub use units::parse_socket_addr;

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
        // Flags were validated by the parser: a bad value here came from the file.
        let named = |err: ConfigError| match &file {
            Some(path) => ConfigError(format!("{}: {err}", path.display())),
            None => err,
        };
        Settings::layered(file.as_deref(), flags.clone())?
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
