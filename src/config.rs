//! Flags → a validated [`Config`]. Nothing downstream re-validates.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How the workers share the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Balance {
    /// One SO_REUSEPORT socket per slot, all bound by the master; the kernel
    /// spreads connections by a hash of the 4-tuple; no shared accept queue.
    Reuseport,
    /// One socket inherited by every worker (a single accept queue; simpler,
    /// but unbalanced under load).
    Shared,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Reuseport => "reuseport",
            Balance::Shared => "shared",
        }
    }
}

/// Everything the master and its workers need, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the ready line says which).
    pub addr: SocketAddr,
    /// Number of worker slots.
    pub workers: NonZeroUsize,
    pub balance: Balance,
    /// `listen(2)` backlog of each socket (capped by `net.core.somaxconn`).
    pub backlog: u32,
    /// How long a draining worker may take before it is killed.
    pub graceful_timeout: Duration,
    /// hyper's header read timeout: a client must send a full request head within
    /// it, and a keep-alive connection may stay idle for at most this long.
    pub header_read_timeout: Duration,
    pub log_level: tracing::Level,
}

impl Config {
    /// Parses the process arguments; on a usage error prints clap's message and
    /// exits 2 (before anything is bound or forked).
    pub fn from_args() -> Config {
        Flags::parse().into_config()
    }

    /// Parses `args` (the first one is the program name).
    pub fn try_from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Flags::try_parse_from(args).map(Flags::into_config)
    }
}

impl Default for Config {
    fn default() -> Config {
        Flags::parse_from(["prefork-server"]).into_config()
    }
}

/// prefork-server: a master process forks one HTTP worker per core; the workers
/// accept on sockets the master owns, and the master respawns any worker that dies.
#[derive(Debug, Parser)]
#[command(name = "prefork-server", version, after_help = crate::signals::HELP_TABLE)]
struct Flags {
    /// Address to listen on, IPv4 or IPv6 (e.g. 127.0.0.1, ::1, ::)
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED), value_parser = parse_host)]
    host: IpAddr,

    /// TCP port; 0 picks a free one (the ready line says which)
    #[arg(long, default_value_t = 8000)]
    port: u16,

    /// Number of workers [default: the number of CPUs this process may use]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4096))]
    workers: Option<u16>,

    /// How the workers share the port
    #[arg(long, value_enum, default_value_t = Balance::Reuseport)]
    balance: Balance,

    /// listen(2) backlog of each socket (the kernel caps it at net.core.somaxconn)
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    backlog: u32,

    /// On stop, how long workers may drain before they are killed (e.g. 30, 30s, 500ms, 2m)
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    graceful_timeout: Duration,

    /// Time a client has to send a request head; also the keep-alive idle limit
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    header_read_timeout: Duration,

    /// Log level: error, warn, info, debug or trace
    #[arg(long, default_value_t = tracing::Level::INFO)]
    log_level: tracing::Level,
}

impl Flags {
    fn into_config(self) -> Config {
        let workers = match self.workers {
            Some(n) => NonZeroUsize::new(n.into()).expect("clap's range starts at 1"),
            None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        };
        Config {
            addr: SocketAddr::new(self.host, self.port),
            workers,
            balance: self.balance,
            backlog: self.backlog,
            graceful_timeout: self.graceful_timeout,
            header_read_timeout: self.header_read_timeout,
            log_level: self.log_level,
        }
    }
}

/// An IP address, with or without the brackets of `[::1]`.
fn parse_host(text: &str) -> Result<IpAddr, String> {
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    bare.parse()
        .map_err(|_| format!("'{text}' is not an IP address (use e.g. 0.0.0.0, 127.0.0.1, ::1)"))
}

/// `30`, `30s`, `500ms`, `2m` (a bare number is seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (use e.g. 30, 30s, 500ms, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit '{unit}' in '{text}' (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range"))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be greater than 0".into()),
        duration => Ok(duration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_from_args(std::iter::once("prefork-server").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.addr, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(config.balance, Balance::Reuseport);
        assert_eq!(config.backlog, 1024);
        assert_eq!(config.graceful_timeout, Duration::from_secs(30));
        assert_eq!(config.workers, std::thread::available_parallelism().unwrap());
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
    fn bad_values_are_usage_errors() {
        for args in [
            &["--workers", "0"][..],
            &["--port", "70000"],
            &["--bogus"],
            &["--balance", "rr"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_positive_duration("0").is_err());
    }
}
