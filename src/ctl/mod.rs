//! The control commands (`prefork-server status|top|reload|stop|upgrade|scale`): they
//! act on a running server, like `nginx -s`, and exit. The binary's, not the
//! library's: a program built on the library parses its own command line.

/// `println!` that does not panic when stdout is closed (`| head -1`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod table;
mod top;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Subcommand;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every worker of a running server, read from its --admin listener
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// The status table redrawn every second, with each worker's requests/s and p99 (Ctrl-C ends it)
    Top {
        #[command(flatten)]
        target: Target,
        /// Time between two frames (500ms, 2s...)
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many frames [default: until interrupted]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Reload the running master (HUP): re-read its config, replace its workers
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Stop the running master: graceful (TERM), or fast (QUIT) with --fast
    Stop {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        fast: bool,
    },
    /// Hot-upgrade the running master (USR2) to the binary on disk
    Upgrade {
        #[command(flatten)]
        target: Target,
    },
    /// Reopen the log files (USR1) of the master and every worker, after logrotate renamed them
    Reopen {
        #[command(flatten)]
        target: Target,
    },
    /// Grow or shrink the running server to N workers (TTIN/TTOU, one at a time,
    /// each checked on its --admin listener); a HUP keeps it unless the config
    /// file's `workers` changed
    Scale {
        /// How many workers the server is to run, 1 to 4096
        #[arg(value_parser = clap::value_parser!(u16).range(1..=4096))]
        workers: u16,
        #[command(flatten)]
        target: Target,
    },
}

/// Which server a control command acts on. Each is looked for where the server
/// itself reads it: this flag, then the server's own flag before the command
/// (`prefork-server --pid-file F reload`), its `PREFORK_*` variable, and the
/// config file (`--config` here or before the command, or `PREFORK_CONFIG`).
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The running server's pid file (the master's --pid-file); else PREFORK_PID_FILE, or pid_file in the config file
    #[arg(long = "pid-file", value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// The running server's --admin address (status, top and scale); else PREFORK_ADMIN, or admin in the config file
    #[arg(long = "admin", value_name = "ADDR", value_parser = prefork_server::parse_socket_addr)]
    admin: Option<SocketAddr>,
    /// The running server's config file, to read pid_file and admin from; else PREFORK_CONFIG
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// A value a control command uses, and where it came from (for its errors).
struct Found<T> {
    value: T,
    /// `--pid-file`, `PREFORK_PID_FILE`, `pid_file in prefork.toml`.
    source: String,
}

impl std::fmt::Display for Found<SocketAddr> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (from {})", self.value, self.source)
    }
}

/// Where the server's settings say it is, read once for a control command.
struct Sources {
    /// `pid_file` and `admin` as the server would read them (flags before the
    /// command, `PREFORK_*`, the config file), or why they cannot be read.
    located: Result<prefork_server::Located, String>,
}

impl Sources {
    fn new(mut server: prefork_server::ServerFlags, config: Option<PathBuf>) -> Sources {
        if let Some(file) = config {
            server.set_config_file(file);
        }
        let located = server.locate().map_err(|err| err.to_string());
        Sources { located }
    }

    /// `own` (this command's flag), else the server's setting `key`.
    fn find<T: Clone>(
        &self,
        own: Option<T>,
        key: &str,
        read: impl Fn(&prefork_server::Located) -> Option<T>,
    ) -> Result<Found<T>, String> {
        let flag = format!("--{}", key.replace('_', "-"));
        if let Some(value) = own {
            return Ok(Found { value, source: flag });
        }
        let variable = format!("PREFORK_{}", key.to_uppercase());
        let located = self
            .located
            .as_ref()
            .map_err(|err| format!("cannot read the server's settings: {err}"))?;
        let Some(value) = read(located) else {
            let file = located
                .file
                .as_ref()
                .map_or(String::new(), |file| format!(", nor in {}", file.display()));
            return Err(format!(
                "which server? give {flag}, or set {variable} or `{key}` in the config file (--config); not set{file}"
            ));
        };
        let on_command_line = std::env::args().any(|arg| arg == flag || arg.starts_with(&format!("{flag}=")));
        let source = if on_command_line {
            flag
        } else if std::env::var_os(&variable).is_some() {
            variable
        } else {
            match &located.file {
                Some(file) => format!("`{key}` in {}", file.display()),
                None => key.to_owned(),
            }
        };
        Ok(Found { value, source })
    }

    fn pid_file(&self, target: &Target) -> Result<Found<PathBuf>, String> {
        self.find(target.pid_file.clone(), "pid_file", |located| located.pid_file.clone())
    }

    fn admin(&self, target: &Target) -> Result<Found<SocketAddr>, String> {
        self.find(target.admin, "admin", |located| located.admin)
    }
}

impl std::fmt::Display for Found<PathBuf> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (from {})", self.value.display(), self.source)
    }
}

/// Runs `command` on the server `server` (the flags before it) describes:
/// exit code 0 when it was done, 1 with a message when not.
pub fn run(command: Command, server: prefork_server::ServerFlags) -> std::process::ExitCode {
    let result = match command {
        Command::Status { target } => {
            let sources = Sources::new(server, target.config.clone());
            sources.admin(&target).and_then(|admin| status(&admin))
        }
        Command::Top {
            target,
            interval,
            count,
        } => {
            let sources = Sources::new(server, target.config.clone());
            sources
                .admin(&target)
                .and_then(|admin| top::top(&admin, interval, count))
        }
        Command::Reload { target } => {
            check_before_reload(&server, &target).and_then(|()| signal_with(server, target, Signal::SIGHUP))
        }
        Command::Stop { target, fast } => {
            signal_with(server, target, if fast { Signal::SIGQUIT } else { Signal::SIGTERM })
        }
        Command::Upgrade { target } => signal_with(server, target, Signal::SIGUSR2),
        Command::Reopen { target } => signal_with(server, target, Signal::SIGUSR1),
        Command::Scale { workers, target } => {
            let sources = Sources::new(server, target.config.clone());
            sources
                .pid_file(&target)
                .and_then(|pid_file| Ok((pid_file, sources.admin(&target)?)))
                .and_then(|(pid_file, admin)| scale(&pid_file, &admin, workers.into()))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "prefork-server: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A reload the master would refuse for its TLS files is refused here, before
/// any signal, with the reason and exit 1: a renewal hook (certbot's
/// `--deploy-hook`) then fails as it should instead of reporting success.
fn check_before_reload(server: &prefork_server::ServerFlags, target: &Target) -> Result<(), String> {
    let mut server = server.clone();
    if let Some(file) = &target.config {
        server.set_config_file(file.clone());
    }
    server
        .check_tls_files()
        .map_err(|err| format!("not reloading: the master would refuse it: {err}"))
}

fn signal_with(server: prefork_server::ServerFlags, target: Target, signal: Signal) -> Result<(), String> {
    let sources = Sources::new(server, target.config.clone());
    signal_master(&sources.pid_file(&target)?, signal)
}

/// The master named by `pid_file`: a positive pid (never 0 or negative, which
/// `kill(2)` reads as whole process groups, or every process), alive, running
/// this same program, and not one of its workers.
fn master(found: &Found<PathBuf>) -> Result<Pid, String> {
    let shown = found;
    let text = std::fs::read_to_string(&found.value)
        .map_err(|err| format!("cannot read the pid file {shown}: {err} (is the server running with --pid-file?)"))?;
    let pid = match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Pid::from_raw(pid),
        _ => {
            return Err(format!(
                "the pid file {shown} holds {text:?}, not a process id (a positive number)"
            ))
        }
    };
    if pid == nix::unistd::getpid() {
        return Err(format!("the pid file {shown} names this very command (pid {pid})"));
    }
    match kill(pid, None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => {
            return Err(format!(
                "stale pid file {shown}: no process {pid} (the server is not running)"
            ))
        }
    }
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end().to_owned());
    let ours = comm("self").map_err(|err| format!("cannot read /proc/self/comm: {err}"))?;
    match comm(&pid.to_string()) {
        Ok(theirs) if theirs == prefork_server::WORKER_PROCESS_NAME => Err(format!(
            "the pid file {shown} names pid {pid}, a worker, not the master; signalling it would only restart it"
        )),
        Ok(theirs) if theirs == ours => Ok(pid),
        Ok(theirs) => Err(format!(
            "stale pid file {shown}: process {pid} is {theirs:?}, not {ours:?}"
        )),
        Err(err) => Err(format!(
            "cannot tell what process {pid} is (/proc/{pid}/comm: {err}); nothing sent"
        )),
    }
}

fn signal_master(pid_file: &Found<PathBuf>, signal: Signal) -> Result<(), String> {
    let pid = master(pid_file)?;
    kill(pid, signal).map_err(|err| format!("cannot send {} to pid {pid}: {err}", signal.as_str()))?;
    say!("sent {} to the master (pid {pid})", signal.as_str());
    Ok(())
}

/// `GET /status` on the admin listener.
fn fetch_status(found: &Found<SocketAddr>) -> Result<serde_json::Value, String> {
    let admin = found.value;
    let fail = |err: std::io::Error| format!("cannot read /status from {found}: {err} (is --admin {admin} on?)");
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).map_err(fail)?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(fail)?;
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .map_err(fail)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(fail)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    serde_json::from_str(body).map_err(|err| {
        format!(
            "{found} does not answer /status as prefork-server's --admin listener does ({err}): is it the main port?"
        )
    })
}

fn status(admin: &Found<SocketAddr>) -> Result<(), String> {
    let status = fetch_status(admin)?;
    let text = table::render(&status, None);
    say!("{}", text.trim_end());
    Ok(())
}

/// Sends TTIN/TTOU one at a time until the admin listener reports `target`
/// slots: signals of one kind sent back to back would coalesce into one.
fn scale(pid_file: &Found<PathBuf>, admin: &Found<SocketAddr>, target: u64) -> Result<(), String> {
    let pid = master(pid_file)?;
    // The pid file and the admin address may name two different servers:
    // signals to one, watched on the other, would change the wrong one.
    let serving = fetch_status(admin)?["master_pid"].as_i64();
    if serving != Some(i64::from(pid.as_raw())) {
        let serving = serving.map_or("an unknown master".into(), |other| format!("master {other}"));
        return Err(format!(
            "the admin listener {admin} belongs to {serving}, not to the master (pid {pid}) of {pid_file}; nothing sent"
        ));
    }
    let workers = |admin: &Found<SocketAddr>| fetch_status(admin).map(|status| status["workers"].as_u64().unwrap_or(0));
    let mut current = workers(admin)?;
    while current != target {
        let signal = if current < target {
            Signal::SIGTTIN
        } else {
            Signal::SIGTTOU
        };
        kill(pid, signal).map_err(|err| format!("cannot send {} to pid {pid}: {err}", signal.as_str()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let before = current;
        while current == before {
            if Instant::now() > deadline {
                return Err(format!(
                    "the master (pid {pid}) did not act on {} within 10s",
                    signal.as_str()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
            current = workers(admin)?;
        }
    }
    let plural = if target == 1 { "" } else { "s" };
    say!("the master (pid {pid}) runs {target} worker{plural}");
    Ok(())
}
