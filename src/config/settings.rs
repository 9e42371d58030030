//! Every setting, declared once (see `declare.rs` for what each entry makes):
//! its flag and environment variable, its file key, its help text, its type in
//! the `Config`, its default and its checks. Then the checks that span two
//! settings, and the small resolvers the entries name.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::declare::{resolve, settings};
use super::kinds::{AccessLogFormat, Balance, ExecReady, LogFormat, StopSignal, TlsClientAuth};
use super::units::{
    duration, header_list_size, one_or_many, parse_duration, parse_header_list_size, parse_host,
    parse_positive_duration, parse_size, parse_socket_addr, parse_ticket_rotation, parsed, size, ticket_rotation,
    MIN_WORKER_MEMORY,
};
use super::ConfigError;

settings! {
/// Everything the master and its workers need, validated.
///
/// From the command line ([`Config::from_args`]), or built in code: what the
/// program sets through a setter (`set_workers`, [`Config::set_addr`], ...) is
/// its own choice, which a reload (HUP) keeps over the config file and the
/// flags, even where it equals what they say.
///
/// ```no_run
/// let mut config = prefork_server::Config::default();
/// config
///     .set_addr("127.0.0.1:8080".parse().expect("an address"))
///     .set_workers(std::num::NonZeroUsize::new(4).expect("not 0"))
///     .set_graceful_timeout(std::time::Duration::from_secs(10));
/// prefork_server::run(config).expect("the server ran");
/// ```
pub struct Config;

    /// Address to listen on, IPv4 or IPv6 (e.g. 127.0.0.1, ::1, ::) [default: 0.0.0.0]
    #[arg(long, env = "PREFORK_HOST", value_parser = parse_host)]
    #[serde(default, deserialize_with = "parsed")]
    host, set_host: IpAddr => IpAddr = or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));

    /// TCP port; 0 picks a free one (the ready line says which) [default: 8000]
    #[arg(long, env = "PREFORK_PORT")]
    port, set_port: u16 => u16 = or(8000);

    /// Serve TLS on the port with this certificate chain (PEM); repeat it for more certificates, chosen by the name the client asks for (SNI), the first the default
    #[arg(long, env = "PREFORK_TLS_CERT", value_name = "FILE")]
    #[serde(default, deserialize_with = "one_or_many")]
    tls_cert, set_tls_cert: Vec<PathBuf> => Vec<PathBuf> = list;

    /// The private key (PEM) of each --tls-cert, in the same order
    #[arg(long, env = "PREFORK_TLS_KEY", value_name = "FILE")]
    #[serde(default, deserialize_with = "one_or_many")]
    tls_key, set_tls_key: Vec<PathBuf> => Vec<PathBuf> = list;

    /// Ask TLS clients for a certificate issued by one of these CAs (PEM); the service finds the verified chain in each request's TlsInfo [default: off]
    #[arg(long, env = "PREFORK_TLS_CLIENT_CA", value_name = "FILE")]
    tls_client_ca, set_tls_client_ca: PathBuf => Option<PathBuf> = optional;

    /// With --tls-client-ca: required (a client without a valid certificate fails the handshake) or optional (it is served, without one) [default: required]
    #[arg(long, env = "PREFORK_TLS_CLIENT_AUTH", value_enum)]
    tls_client_auth, set_tls_client_auth: TlsClientAuth => Option<TlsClientAuth> = optional;

    /// Session-ticket keys from these files (48 or 80 random bytes each, as nginx's): the first encrypts, all decrypt; re-read on HUP [default: made in memory by the master, rotated]
    #[arg(long, env = "PREFORK_TLS_TICKET_KEY", value_name = "FILE")]
    #[serde(default, deserialize_with = "one_or_many")]
    tls_ticket_key, set_tls_ticket_key: Vec<PathBuf> => Vec<PathBuf> = list;

    /// How often the master replaces the in-memory ticket key; tickets of the one before still resume for one more period [default: 1h]
    #[arg(long, env = "PREFORK_TLS_TICKET_ROTATION", value_name = "DURATION", value_parser = parse_ticket_rotation)]
    #[serde(default, deserialize_with = "ticket_rotation")]
    tls_ticket_rotation, set_tls_ticket_rotation: Duration => Duration = or(Duration::from_secs(3600));

    /// With --tls-cert: also serve plain HTTP (and h2c) on this port of --host, for a redirect to HTTPS or a health check; 0 picks a free one [default: off]
    #[arg(long, env = "PREFORK_PLAIN_PORT", value_name = "PORT")]
    plain_port, set_plain_port: u16 => Option<u16> = optional;

    /// With --plain-port: answer every request there with 308 Permanent Redirect to the same URL over HTTPS, without calling the service
    #[arg(
        long,
        env = "PREFORK_PLAIN_REDIRECT",
        num_args = 0,
        default_missing_value = "true"
    )]
    plain_redirect, set_plain_redirect: bool => bool = or(false);

    /// Number of workers, 1 to 4096 [default: the number of CPUs this process may use]
    #[arg(long, env = "PREFORK_WORKERS", value_parser = clap::value_parser!(u16).range(1..=4096))]
    workers, set_workers: u16 => NonZeroUsize = workers;

    /// How new connections reach the workers: steered (by load, in the kernel), lending, reuseport (the kernel's hash) or shared [default: steered]
    #[arg(long, env = "PREFORK_BALANCE", value_enum)]
    balance, set_balance: Balance => Balance = or(Balance::Steered);

    /// listen(2) backlog of each socket (the kernel caps it at net.core.somaxconn) [default: 1024]
    #[arg(long, env = "PREFORK_BACKLOG", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    backlog, set_backlog: u32 => u32 = at_least_1(1024);

    /// On stop, how long workers may drain before they are killed (e.g. 30, 30s, 500ms, 2m) [default: 30s]
    #[arg(long, env = "PREFORK_GRACEFUL_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    graceful_timeout, set_graceful_timeout: Duration => Duration = or(Duration::from_secs(30));

    /// On TERM/INT, fail /readyz and keep serving this long before the drain, so a load balancer takes the server out first (a second TERM skips it) [default: 0]
    #[arg(long, env = "PREFORK_SHUTDOWN_DELAY", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    shutdown_delay, set_shutdown_delay: Duration => Duration = or(Duration::ZERO);

    /// Time a client has to send a request head; also the keep-alive idle limit [default: 30s]
    #[arg(long, env = "PREFORK_HEADER_READ_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    header_read_timeout, set_header_read_timeout: Duration => Duration = positive(Duration::from_secs(30));

    /// Time a request body may go without a byte arriving, while its handler waits for it [default: 30s]
    #[arg(long, env = "PREFORK_BODY_READ_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    body_read_timeout, set_body_read_timeout: Duration => Duration = positive(Duration::from_secs(30));

    /// Time a response may go without a write making progress (a client that stopped reading) [default: 30s]
    #[arg(long, env = "PREFORK_SEND_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    send_timeout, set_send_timeout: Duration => Duration = positive(Duration::from_secs(30));

    /// HTTP/2: streams a client may have open at once on one connection [default: 128]
    #[arg(long, env = "PREFORK_H2_MAX_CONCURRENT_STREAMS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    h2_max_concurrent_streams, set_h2_max_concurrent_streams: u32 => u32 = at_least_1(128);

    /// HTTP/2: the largest header list a request may send (e.g. 64KiB) [default: 64KiB]
    #[arg(long, env = "PREFORK_H2_MAX_HEADER_LIST_SIZE", value_name = "SIZE", value_parser = parse_header_list_size)]
    #[serde(default, deserialize_with = "header_list_size")]
    h2_max_header_list_size, set_h2_max_header_list_size: u32 => u32 = or(64 << 10);

    /// Log level: error, warn, info, debug or trace [default: info]
    #[arg(long, env = "PREFORK_LOG_LEVEL")]
    #[serde(default, deserialize_with = "parsed")]
    log_level, set_log_level: tracing::Level => tracing::Level = or(tracing::Level::INFO);

    /// The server's own log: text or json (one object per line) [default: text]
    #[arg(long, env = "PREFORK_LOG_FORMAT", value_enum)]
    log_format, set_log_format: LogFormat => LogFormat = or(LogFormat::Text);

    /// Write the server's own log to this file instead of stderr (reopened on USR1)
    #[arg(long, env = "PREFORK_LOG_FILE", value_name = "FILE")]
    log_file, set_log_file: PathBuf => Option<PathBuf> = optional;

    /// Write one line per response to this file, or - for stderr (reopened on USR1) [default: off]
    #[arg(long, env = "PREFORK_ACCESS_LOG", value_name = "FILE")]
    access_log, set_access_log: PathBuf => Option<PathBuf> = optional;

    /// The access log's lines: combined (nginx's, plus duration in µs and pid) or json [default: combined]
    #[arg(long, env = "PREFORK_ACCESS_LOG_FORMAT", value_enum)]
    access_log_format, set_access_log_format: AccessLogFormat => AccessLogFormat = or(AccessLogFormat::Combined);

    /// Log every request slower than this, head to end of body (method, target, status, duration, worker), e.g. 500ms, 2s [default: off]
    #[arg(long, env = "PREFORK_SLOW_REQUEST", value_name = "DURATION", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    slow_request, set_slow_request: Duration => Option<Duration> = optional;

    /// On HUP, how many slots are replaced at a time [default: 1]
    #[arg(long, env = "PREFORK_RELOAD_BATCH", value_parser = clap::value_parser!(u16).range(1..))]
    reload_batch, set_reload_batch: u16 => NonZeroUsize = nonzero(1);

    /// A worker not ready within this is a boot failure; on HUP it aborts the reload [default: 30s]
    #[arg(long, env = "PREFORK_READY_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    ready_timeout, set_ready_timeout: Duration => Duration = positive(Duration::from_secs(30));

    /// On USR2, the binary to start as the new master [default: the path this one was started from]
    #[arg(long, env = "PREFORK_UPGRADE_BINARY", value_name = "PATH")]
    upgrade_binary, set_upgrade_binary: PathBuf => Option<PathBuf> = optional;

    /// On USR2, a new master not ready within this is stopped; this one keeps serving [default: 60s]
    #[arg(long, env = "PREFORK_UPGRADE_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "duration")]
    upgrade_timeout, set_upgrade_timeout: Duration => Duration = or(Duration::from_secs(60));

    /// Write the master's pid here once it is ready (and the new master's after an upgrade); one that cannot be written stops the start (exit 1)
    #[arg(long, env = "PREFORK_PID_FILE", value_name = "FILE")]
    pid_file, set_pid_file: PathBuf => Option<PathBuf> = optional;

    /// Replace a worker after it has served this many requests (new one ready first) [default: 0 = never]
    #[arg(long, env = "PREFORK_MAX_REQUESTS", value_name = "N")]
    max_requests, set_max_requests: u64 => u64 = or(0);

    /// Add a random 0..=J to each worker's --max-requests, so they are not replaced together [default: 0]
    #[arg(long, env = "PREFORK_MAX_REQUESTS_JITTER", value_name = "J")]
    max_requests_jitter, set_max_requests_jitter: u64 => u64 = or(0);

    /// Kill and replace a ready worker whose event loop has been stuck this long (0: never) [default: 30s]
    #[arg(long, env = "PREFORK_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    timeout, set_timeout: Duration => Duration = heartbeat_timeout;

    /// Recycle a worker whose resident memory exceeds this (e.g. 512MiB, 2GiB, 100MB) [default: no limit]
    #[arg(long, env = "PREFORK_MAX_WORKER_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, deserialize_with = "size")]
    max_worker_memory, set_max_worker_memory: u64 => Option<u64> = worker_memory;

    /// Serve /status (JSON), /metrics, /readyz, /livez and /healthz on this address, from the workers (e.g. 127.0.0.1:9100) [default: off]
    #[arg(long, env = "PREFORK_ADMIN", value_name = "ADDR", value_parser = parse_socket_addr)]
    #[serde(default, deserialize_with = "parsed")]
    admin, set_admin: SocketAddr => Option<SocketAddr> = optional;

    /// Allow --admin on an address other hosts can reach (it is refused otherwise)
    #[arg(
        long,
        env = "PREFORK_ADMIN_ALLOW_REMOTE",
        num_args = 0,
        default_missing_value = "true"
    )]
    admin_allow_remote, set_admin_allow_remote: bool => bool = or(false);

    /// Open connections per worker beyond which it stops accepting until one closes; the rest wait in the kernel's queue (nginx's worker_connections)
    #[arg(long, env = "PREFORK_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections, set_max_connections: u32 => Option<NonZeroUsize> = connection_limit;

    /// A request declaring a body larger than this (Content-Length: 1m, 10MiB...) gets 413 without reaching the service [default: no limit]
    #[arg(long, env = "PREFORK_MAX_BODY_SIZE", value_name = "SIZE", value_parser = parse_size)]
    #[serde(default, deserialize_with = "size")]
    max_body_size, set_max_body_size: u64 => Option<u64> = optional;

    /// Run the workers as this user (the master, started as root to bind, stays root to bind on reload)
    #[arg(long, env = "PREFORK_USER", value_name = "USER")]
    user, set_user: String => Option<String> = optional;

    /// Run the workers in this group [default: the user's group]
    #[arg(long, env = "PREFORK_GROUP", value_name = "GROUP")]
    group, set_group: String => Option<String> = optional;

    /// Exec mode: when a worker counts as ready: accepting (once it, or a process it started, waits on its socket), notify (once it says READY=1) or exec (at once) [default: accepting]
    #[arg(long, env = "PREFORK_EXEC_READY", value_enum)]
    exec_ready, set_exec_ready: ExecReady => ExecReady = or(ExecReady::Accepting);

    /// Exec mode: the signal that asks a worker to stop gracefully: TERM, INT, QUIT, HUP, USR1, USR2 or WINCH [default: TERM]
    #[arg(long, env = "PREFORK_STOP_SIGNAL", value_name = "SIGNAL")]
    #[serde(default, deserialize_with = "parsed")]
    stop_signal, set_stop_signal: StopSignal => StopSignal = or(StopSignal::default());

    /// Exec mode: TCP_NODELAY on the command's socket, so a reply written in two parts is not held for the client's delayed ACK (systemd's NoDelay=) [default: true]
    #[arg(long, env = "PREFORK_EXEC_NODELAY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    exec_nodelay, set_exec_nodelay: bool => bool = or(true);

    /// Exec mode: hand the command its socket non-blocking; by default it is blocking, as systemd hands it (NonBlocking=) [default: false]
    #[arg(long, env = "PREFORK_EXEC_NONBLOCKING", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    exec_nonblocking, set_exec_nonblocking: bool => bool = or(false);

    /// Exec mode: every slot runs this command, its socket as fd 3 with LISTEN_FDS=1, as systemd's socket activation passes it (e.g. -- python3 app.py)
    #[arg(last = true, value_name = "PROGRAM")]
    command, set_command: Vec<String> => Option<Vec<String>> = program;
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

    /// Resolves every setting and checks what spans two of them. A flag's
    /// value was checked by the parser; a file's has not been through it, so
    /// every check is made again here.
    pub(super) fn resolve(self, file: Option<PathBuf>, flags: Settings) -> Result<Config, ConfigError> {
        let config = self.resolve_each(file, flags)?;
        if let Some(admin) = config.admin {
            if !admin.ip().is_loopback() && !config.admin_allow_remote {
                return Err(ConfigError(format!(
                    "admin: {admin} is reachable from other hosts; use a loopback address or --admin-allow-remote"
                )));
            }
        }
        Ok(config)
    }
}

/// The TLS settings that only make sense together, checked on the config as
/// it will run (after a reload has kept what the program chose in code).
pub(super) fn check_tls(config: &Config) -> Result<(), ConfigError> {
    let fail = |why: String| Err(ConfigError(why));
    let (certs, keys) = (config.tls_cert.len(), config.tls_key.len());
    if certs != keys {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        return fail(format!(
            "tls_key: {} (--tls-cert) but {} (--tls-key): give one key per certificate, in the same order",
            count(certs, "certificate"),
            count(keys, "key")
        ));
    }
    let period = config.tls_ticket_rotation;
    if let Err(why) = super::units::parse_ticket_rotation(&format!("{}s", period.as_secs_f64())) {
        return fail(format!("tls_ticket_rotation: {why}"));
    }
    if config.tls_ticket_key.len() > crate::sys::tickets::MAX_KEYS {
        return fail(format!(
            "tls_ticket_key: {} files; at most {} keys are accepted at once (the one that seals and the ones before it)",
            config.tls_ticket_key.len(),
            crate::sys::tickets::MAX_KEYS
        ));
    }
    if config.plain_redirect && config.plain_port.is_none() {
        return fail("plain_redirect: redirects are answered on the plain port: give --plain-port too".into());
    }
    if certs == 0 {
        if config.plain_port.is_some() {
            return fail(
                "plain_port: the port already serves plain HTTP; --plain-port is a plain port beside a TLS one (--tls-cert)"
                    .into(),
            );
        }
        if config.tls_client_ca.is_some() {
            return fail("tls_client_ca: client certificates need TLS: give --tls-cert and --tls-key".into());
        }
        if config.tls_client_auth.is_some() {
            return fail("tls_client_auth: client certificates need TLS: give --tls-cert and --tls-key".into());
        }
        if !config.tls_ticket_key.is_empty() {
            return fail("tls_ticket_key: session tickets need TLS: give --tls-cert and --tls-key".into());
        }
        return Ok(());
    }
    if config.tls_client_auth.is_some() && config.tls_client_ca.is_none() {
        return fail(
            "tls_client_auth: it says whether a client certificate is required: give --tls-client-ca too".into(),
        );
    }
    if config
        .plain_port
        .is_some_and(|plain| plain != 0 && plain == config.port)
    {
        return fail(format!(
            "plain_port: {} is --port itself, which serves TLS",
            config.port
        ));
    }
    if config.command.is_some() {
        return fail(
            "tls_cert: exec mode hands the command a plain TCP socket, so TLS is the command's own business \
             (gunicorn --certfile, uvicorn --ssl-certfile, Node's https): give it the certificate, not prefork-server"
                .into(),
        );
    }
    Ok(())
}

// The resolvers the entries name: each takes the setting as the layers left it
// (`None`: set nowhere) and gives its value or why it cannot be used.

/// The value, or `default` where it is set nowhere.
fn or<T>(default: T) -> impl FnOnce(Option<T>) -> Result<T, String> {
    move |given| Ok(given.unwrap_or(default))
}

/// A list: empty where it is set nowhere.
fn list<T>(given: Option<Vec<T>>) -> Result<Vec<T>, String> {
    Ok(given.unwrap_or_default())
}

/// A setting that may stay unset.
fn optional<T>(given: Option<T>) -> Result<Option<T>, String> {
    Ok(given)
}

/// A count of at least 1 (the flags' parser checks this; the file's does not).
fn at_least_1(default: u32) -> impl FnOnce(Option<u32>) -> Result<u32, String> {
    move |given| match given {
        Some(0) => Err("must be at least 1".into()),
        other => Ok(other.unwrap_or(default)),
    }
}

fn nonzero(default: u16) -> impl FnOnce(Option<u16>) -> Result<NonZeroUsize, String> {
    move |given| NonZeroUsize::new(given.unwrap_or(default).into()).ok_or_else(|| "must be at least 1".into())
}

fn positive(default: Duration) -> impl FnOnce(Option<Duration>) -> Result<Duration, String> {
    move |given| match given {
        Some(Duration::ZERO) => Err("must be greater than 0".into()),
        other => Ok(other.unwrap_or(default)),
    }
}

/// 1 to 4096; by default one per CPU this process may use.
fn workers(given: Option<u16>) -> Result<NonZeroUsize, String> {
    match given {
        Some(0) => Err("must be at least 1".into()),
        Some(n) if n > 4096 => Err("must be at most 4096".into()),
        Some(n) => NonZeroUsize::new(n.into()).ok_or_else(|| "must be at least 1".into()),
        None => Ok(std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)),
    }
}

fn heartbeat_timeout(given: Option<Duration>) -> Result<Duration, String> {
    match given {
        // Workers beat every 250 ms: a shorter limit would kill healthy ones.
        Some(t) if !t.is_zero() && t < Duration::from_secs(1) => Err("must be 0 (off) or at least 1s".into()),
        other => Ok(other.unwrap_or(Duration::from_secs(30))),
    }
}

fn worker_memory(given: Option<u64>) -> Result<Option<u64>, String> {
    match given {
        Some(bytes) if bytes < MIN_WORKER_MEMORY => Err(format!(
            "{} MiB is below the {} MiB a worker may use just by booting; recycling could never bring it under",
            bytes as f64 / (1 << 20) as f64,
            MIN_WORKER_MEMORY >> 20
        )),
        other => Ok(other),
    }
}

/// 0 in the file means no limit, as leaving it out does.
fn connection_limit(given: Option<u32>) -> Result<Option<NonZeroUsize>, String> {
    Ok(given.and_then(|n| NonZeroUsize::new(n as usize)))
}

fn program(given: Option<Vec<String>>) -> Result<Option<Vec<String>>, String> {
    match given {
        Some(command) if command.first().map_or(true, |program| program.is_empty()) => Err("names no program".into()),
        other => Ok(other),
    }
}
