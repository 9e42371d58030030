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
mod alloc;
mod body;
mod config;
mod error;
mod http;
mod log;
mod master;
mod metrics;
mod service;
mod sys;
mod tls;
mod worker;

use std::fmt::Display;

use sys::{process, signals};

pub use alloc::Allocator;
pub use body::RequestBody;
pub use config::{
    parse_socket_addr, AccessLogFormat, Balance, Config, ConfigError, ExecReady, Located, LogFormat, ServerFlags,
    StopSignal, TlsClientAuth,
};
pub use error::Error;
pub use http::{Answer, Answered, Hello};
pub use process::exit_code;
/// A certificate in DER, as [`TlsInfo::client_certificates`] gives them.
pub use rustls::pki_types::CertificateDer;
/// For `prefork-server top`: a quantile of `/status`'s bucket counts.
#[doc(hidden)]
pub use sys::traffic::quantile;
pub use tls::TlsInfo;
pub use worker::{draining, is_draining, local_addr};

/// The signal table and the exit codes, as `prefork-server --help` ends.
pub const SIGNALS_HELP: &str = signals::HELP_TABLE;

/// The process name (`comm`) of every worker, as `ps`, `top` and `pgrep` show
/// it; the master keeps the binary's name.
pub const WORKER_PROCESS_NAME: &str = master::WORKER_PROCESS_NAME;
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
    let worker = |start: master::WorkerStart<'_>| worker::run(start, &setup);
    let entries = master::Entries {
        worker: &worker,
        admin: admin::serve_alone,
    };
    master::start(config, entries)
}
