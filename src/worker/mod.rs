//! A worker: everything from "I am the child" to the exit code.
//!
//! By the time [`run`] is called, `sys::spawn` has left every signal blocked,
//! unregistered the master's signal actions, closed every master-only fd,
//! switched to `--user` and made the worker die with the master. Here: build a
//! `current_thread` runtime, install the worker's own signal handlers, and only then unblock
//! signals (a TERM that arrived in between is delivered to the new handler, not
//! lost), make the service, report ready and serve.

mod access;
mod conn;
mod connections;
mod control;
mod draining;
mod frames;
mod io;
mod length;
mod lifecycle;
mod park;
mod protocol;
mod respond;
mod serve;
mod streams;
mod tls;

pub use draining::{draining, is_draining, local_addr};

use std::fmt::Display;
use std::future::Future;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::log::{error, info, warn};
use nix::unistd::getpid;

use crate::config::Config;
use crate::master::WorkerStart;
use crate::service::WorkerApp;
use crate::sys::channel::{self, ToMaster};
use crate::sys::process::{self, exit_code};
use crate::sys::scoreboard::{Record, State};
use access::AccessLog;
use control::Control;
use serve::serve;

/// Runs a worker to completion and returns its exit code (see `process::exit_code`).
pub(crate) fn run<F, Fut, S, E>(child: WorkerStart<'_>, setup: &F) -> i32
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, E>>,
    E: Display,
    S: WorkerApp,
{
    let name = format!("worker {} (pid {})", child.slot, getpid());
    // The runtime's thread (this one) serves every connection: its freed
    // buffers are kept for the next (with the binary's allocator).
    crate::Allocator::keep_buffers_on_this_thread();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            let reason = format!("cannot build the tokio runtime: {err}");
            return boot_failed(&name, child.channel, exit_code::BOOT_FAILED, reason);
        }
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&runtime, async move {
        let WorkerStart {
            listener,
            mut channel,
            config,
            record: child_record,
            scoreboard,
            admin,
            steer,
            tickets,
            plain,
            ..
        } = child;
        let (listener, service, mut control) = match boot(listener, setup, config, child_record, &name).await {
            Ok(Booted::Serving(listener, service, control)) => (listener, service, control),
            Ok(Booted::Stopped(why)) => {
                info!("{name}: {why} before it was ready: exiting");
                return exit_code::OK;
            }
            Err(BootError { code, reason }) => return boot_failed(&name, channel, code, reason),
        };
        // Opened as the worker's own user (`--user`): it must be able to write there.
        let access_log = match &config.access_log {
            None => None,
            Some(path) => match AccessLog::open(path, config.access_log_format) {
                Ok(access_log) => Some(access_log),
                Err(err) => {
                    let reason = format!("cannot open the access log {}: {err}", path.display());
                    return boot_failed(&name, channel, exit_code::BOOT_FAILED, reason);
                }
            },
        };
        // The master read and checked the files; this builds rustls's
        // configuration from them, with the master's ticket keys.
        let tls = match config.tls.as_deref().map(|loaded| tls::Tls::new(loaded, tickets)) {
            None => None,
            Some(Ok(tls)) => Some(tls),
            Some(Err(reason)) => return boot_failed(&name, channel, exit_code::BOOT_FAILED, reason),
        };
        // `--plain-port`: this worker's own copy, as of its slot's socket (see `boot`).
        let plain = match plain.map(|inherited| {
            let own = inherited.try_clone().and_then(control::accepting);
            let _ = nix::unistd::close(inherited.as_raw_fd());
            own
        }) {
            None => None,
            Some(Ok(plain)) => Some(plain),
            Some(Err(err)) => {
                let reason = format!("cannot use the --plain-port socket: {err}");
                return boot_failed(&name, channel, exit_code::BOOT_FAILED, reason);
            }
        };
        child_record.set_state(State::Ready);
        if channel::send(&mut channel, &ToMaster::Ready).is_err() {
            info!("{name}: the master is gone before this worker was ready; exiting");
            return exit_code::OK;
        }
        if let Err(err) = control.watch_master(channel) {
            // PDEATHSIG still covers the master's death.
            error!("{name}: cannot watch the channel to the master: {err}");
        }
        // Admin connections are few and short: they are cut at the drain with the
        // runtime, not drained.
        let admin = admin.and_then(|admin| match crate::admin::start(admin, scoreboard, config) {
            Ok(server) => Some(tokio::task::spawn_local(server)),
            Err(err) => {
                error!("{name}: cannot serve --admin: {err}");
                None
            }
        });
        let reports = serve::Reports {
            record: child_record,
            steer,
        };
        let extras = serve::Extras { access_log, tls, plain };
        serve(listener, service, control, config, reports, extras, &name).await;
        admin.inspect(|task| task.abort());
        exit_code::OK
    });
    // Exit without waiting for spawn_blocking work the service may have left: the
    // deadline the worker just honoured is the contract, not the blocking pool.
    drop(local);
    runtime.shutdown_background();
    code
}

/// Why a worker could not start, and the exit code that says so.
struct BootError {
    code: i32,
    reason: String,
}

impl From<String> for BootError {
    fn from(reason: String) -> BootError {
        BootError {
            code: exit_code::BOOT_FAILED,
            reason,
        }
    }
}

/// What a boot ended with, short of a failure.
enum Booted<S> {
    Serving(tokio::net::TcpListener, S, Control),
    /// Told to stop (TERM, INT, QUIT) during the setup: nothing to drain.
    Stopped(&'static str),
}

/// Boots inside the runtime: signal handlers, then unblock, then the listener and
/// the service. Any error here is a boot failure.
async fn boot<F, Fut, S, E>(
    listener: &TcpListener,
    setup: &F,
    config: &Config,
    record: &'static Record,
    name: &str,
) -> Result<Booted<S>, BootError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, E>>,
    E: Display,
{
    let mut control = Control::install().map_err(|err| format!("cannot install signal handlers: {err}"))?;
    if let Err(err) = crate::sys::hung::install(name.to_owned()) {
        warn!("{name}: cannot arrange to report its stack if it hangs: {err}");
    }
    process::unblock_all_signals().map_err(|err| format!("cannot unblock signals: {err}"))?;
    let accepting = listener
        .try_clone()
        .and_then(control::accepting)
        .map_err(|err| format!("cannot use the slot's socket: {err}"))?;
    // From here the worker holds one copy of its slot's socket, which it closes
    // when it drains (see `serve`). The fd inherited from the master belongs to
    // master structures that are never dropped in this process: closed once, here.
    let _ = nix::unistd::close(listener.as_raw_fd());
    if let Ok(addr) = accepting.local_addr() {
        draining::set_local_addr(addr);
    }
    // The setup is the user's code: a panic there is reported like an error,
    // with its message, but keeps the panic exit code.
    let panicked = |panic: Box<dyn std::any::Any + Send>| BootError {
        code: exit_code::PANICKED,
        reason: format!("the service factory panicked: {}", panic_message(panic.as_ref())),
    };
    let made = catch_unwind(AssertUnwindSafe(setup)).map_err(panicked)?;
    // It runs on this worker's runtime, with the heartbeat going (a setup that
    // takes its time is not a hung worker), for at most --ready-timeout.
    let heartbeat = tokio::task::spawn_local(async move {
        loop {
            record.beat();
            tokio::time::sleep(serve::TICK).await;
        }
    });
    // A stop meanwhile ends it: a worker that serves nothing has nothing to drain.
    let made = tokio::select! {
        made = tokio::time::timeout(config.ready_timeout, unwinding(made)) => made,
        why = control.stopped() => {
            heartbeat.abort();
            return Ok(Booted::Stopped(why));
        }
    };
    heartbeat.abort();
    let limit = crate::sys::process::human(config.ready_timeout);
    let made = made.map_err(|_| format!("the per-worker setup did not finish within {limit} (--ready-timeout)"))?;
    let service = made
        .map_err(panicked)?
        .map_err(|err| format!("cannot make the service: {err}"))?;
    Ok(Booted::Serving(accepting, service, control))
}

/// Polls `future` to its end, catching a panic in it as an `Err`.
async fn unwinding<F: Future>(future: F) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
        Ok(poll) => poll.map(Ok),
        Err(panic) => std::task::Poll::Ready(Err(panic)),
    })
    .await
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "(no message)",
    }
}

fn boot_failed(name: &str, mut channel: UnixStream, code: i32, reason: String) -> i32 {
    error!("{name}: {reason}");
    // The master may already be gone; the exit code says the same thing.
    let _ = channel::send(&mut channel, &ToMaster::BootError(reason));
    code
}
