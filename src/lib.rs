//! prefork-server: a multi-process HTTP supervisor in the style of nginx, gunicorn
//! and Node's `cluster`.
//!
//! A single-threaded master binds every listener, forks one worker per slot, and
//! respawns any worker that dies. Each worker serves your service with hyper on
//! its own `current_thread` tokio runtime: HTTP/1.1 with keep-alive and upgrades
//! (WebSockets), and HTTP/2 over cleartext (h2c with prior knowledge, as gRPC
//! clients and load balancers' upstream pools speak it), told apart by the
//! connection's first bytes. The service is a hyper service (`service_fn`) or a
//! tower service (an axum `Router`, tonic's `Routes`, a tower-http stack), as it
//! is. Bring it with [`run_with`]; the factory runs in each worker after the
//! fork, so per-worker state (pools, caches) is built there. Handlers can ask
//! when their worker begins to drain ([`draining`]) and where it listens
//! ([`local_addr`]). With a command instead ([`Config::command`]), the workers
//! run any program on the socket, as systemd's socket activation hands it over
//! (exec mode).
//!
//! ```no_run
//! let config = prefork_server::Config::from_args();
//! std::process::exit(match prefork_server::run(config) {
//!     Ok(()) => 0,
//!     Err(err) => { eprintln!("prefork-server: {err}"); 1 }
//! });
//! ```
//!
//! The manual is in the repository's `docs/`; the layout of this crate is in
//! `docs/internals.md`.

#![deny(missing_docs)]
mod admin;
mod body;
mod config;
mod error;
mod http;
mod log;
mod master;
mod metrics;
mod service;
mod sys;
mod worker;

use std::fmt::Display;

use sys::{listener, process, scoreboard, signals, upgrade};

pub use body::RequestBody;
pub use config::{
    parse_socket_addr, AccessLogFormat, Balance, Config, ConfigError, ExecReady, Located, LogFormat, ServerFlags,
    StopSignal,
};
pub use error::Error;
pub use http::{Answer, Answered, Hello};
pub use process::exit_code;
pub use worker::{draining, is_draining, local_addr};

/// The signal table and the exit codes, as `prefork-server --help` ends.
pub const SIGNALS_HELP: &str = signals::HELP_TABLE;

/// The process name (`comm`) of every worker, as `ps`, `top` and `pgrep` show
/// it; the master keeps the binary's name.
pub const WORKER_PROCESS_NAME: &str = worker::PROCESS_NAME;
pub use service::{
    per_connection, Addresses, BoxError, Hyper, IntoWorkerService, Made, MakeApp, MakeTower, PerConnection, Tower,
    TowerMakeService, TowerServable, WorkerApp, WorkerService,
};

/// Runs the master with the default app until it stops (Ok) or halts (Err).
pub fn run(config: Config) -> Result<(), Error> {
    run_with(config, Hello::new)
}

/// Runs the master; each worker serves the service `make_service` returns: a
/// hyper service (`service_fn`) or a tower service (an axum `Router`, tonic's
/// `Routes`), as it is.
///
/// `make_service` is called once in each worker, after the fork. An `Err` is a
/// boot failure: the worker exits with code 3, the master backs off and, if no
/// worker ever booted, halts with the error's text. For a setup that must await
/// (a connection pool), see [`run_with_setup`].
///
/// Call it from a single-threaded process: no thread started and no tokio
/// runtime built before it (no `#[tokio::main]`). The master forks without
/// exec, which is only sound then, and refuses to fork otherwise.
///
/// ```no_run
/// use axum::{routing::get, Router};
///
/// let config = prefork_server::Config::from_args();
/// let app = || {
///     let router = Router::new().route("/", get(|| async { "Hello\n" }));
///     Ok::<_, std::convert::Infallible>(router)
/// };
/// if let Err(err) = prefork_server::run_with(config, app) {
///     eprintln!("{err}");
///     std::process::exit(1);
/// }
/// ```
pub fn run_with<F, S, E, M>(config: Config, make_service: F) -> Result<(), Error>
where
    F: Fn() -> Result<S, E>,
    E: Display,
    S: IntoWorkerService<M>,
{
    run_with_setup(config, move || std::future::ready(make_service()))
}

/// Like [`run_with`], with an async per-worker setup: `setup()` runs in each
/// worker after the fork, on the worker's own runtime, before the worker says
/// it is ready (so a reload waits for it). An `Err`, a panic, or a setup still
/// running at `--ready-timeout` is a boot failure.
///
/// ```no_run
/// # use std::convert::Infallible;
/// let config = prefork_server::Config::from_args();
/// prefork_server::run_with_setup(config, || async {
///     tokio::time::sleep(std::time::Duration::from_millis(10)).await; // connect a pool, say
///     Ok::<_, Infallible>(prefork_server::Hello::new()?)
/// })
/// # ;
/// ```
pub fn run_with_setup<F, Fut, S, E, M>(config: Config, setup: F) -> Result<(), Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<S, E>>,
    E: Display,
    S: IntoWorkerService<M>,
{
    let setup = || {
        let made = setup();
        async move { made.await.map(IntoWorkerService::into_worker_service) }
    };
    init_logging(&config)?;
    if let Some((old, new)) = process::raise_file_limit() {
        crate::log::debug!("master: open file limit raised from {old} to {new} (the hard limit)");
    }
    // Before anything is bound: a command that cannot run, or an unknown user,
    // is a startup error.
    if let Some(program) = config.command.as_ref().and_then(|command| command.first()) {
        sys::exec::find(program).map_err(|cause| Error::Command { cause })?;
    }
    let run_as = sys::privileges::resolve(config.user.as_deref(), config.group.as_deref())
        .map_err(|cause| Error::RunAs { cause })?;
    if let Some(path) = &config.pid_file {
        sys::pidfile::check(path, std::process::id()).map_err(|source| Error::PidFile {
            path: path.clone(),
            source,
        })?;
    }
    let mut origin = master::Origin {
        args: std::env::args_os().skip(1).collect(),
        binary: std::env::current_exe().ok(),
        handover: None,
    };
    let listeners = match upgrade::inherited().map_err(Error::Handover)? {
        Some(inherited) => {
            let count = inherited.sockets.len();
            crate::log::info!(
                "master: taking over {count} sockets from the old master (pid {})",
                inherited.from
            );
            origin.handover = Some(inherited.ready);
            listener::Listeners::inherit(inherited.sockets, inherited.admin, inherited.balance, config.backlog)?
        }
        None => match upgrade::activated().map_err(Error::Activation)? {
            Some(sockets) => {
                let balance = if sockets.len() == 1 {
                    Balance::Shared
                } else {
                    Balance::Reuseport
                };
                let count = sockets.len();
                crate::log::info!(
                    "master: socket activation: {count} sockets from systemd ({})",
                    balance.as_str()
                );
                let admin = config.admin.map(listener::bind_admin).transpose()?;
                listener::Listeners::inherit(sockets, admin, balance, config.backlog)?
            }
            None => listener::Listeners::bind(config.wanted_sockets(), config.admin)?,
        },
    };
    let scoreboard = scoreboard::Scoreboard::create().map_err(Error::Scoreboard)?;
    let worker_main = |child: worker::Child<'_>| worker::run(child, &setup);
    master::run(config, run_as, listeners, origin, scoreboard, &worker_main)
}

/// Logs to stderr or `--log-file`, as text or JSON, written synchronously by
/// the calling thread: a writer thread would make the master multi-threaded.
/// stderr is written without waiting (see `sys::output`). The server's own
/// lines go to this subscriber whatever the app installed (see `log`).
fn init_logging(config: &Config) -> Result<(), Error> {
    use std::io::IsTerminal;
    let file = match &config.log_file {
        Some(path) => Some(sys::logfile::open(path).map_err(|source| Error::LogFile {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    // A line the writer could not take is its business (counted, or lost to a
    // full disk): the subscriber must not report it on stderr, which may be
    // the very thing that is closed.
    let builder = tracing_subscriber::fmt()
        .with_max_level(config.log_level)
        .with_target(false)
        .log_internal_errors(false);
    let ansi = file.is_none() && std::io::stderr().is_terminal();
    let stderr = sys::output::stderr();
    let dispatch = match (config.log_format, file) {
        (LogFormat::Text, None) => builder.with_writer(stderr).with_ansi(ansi).into(),
        (LogFormat::Text, Some(file)) => builder.with_writer(file).with_ansi(false).into(),
        (LogFormat::Json, None) => builder.json().with_writer(stderr).into(),
        (LogFormat::Json, Some(file)) => builder.json().with_writer(file).into(),
    };
    log::install(dispatch);
    Ok(())
}
