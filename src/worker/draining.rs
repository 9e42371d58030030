//! What the app can ask about its worker, from its setup or any handler:
//! [`draining`], how a handler learns that the worker has begun to drain (so
//! that a long-lived response, a WebSocket, an event stream, a gRPC watch, can
//! end itself cleanly instead of being cut at `--graceful-timeout`), and
//! [`local_addr`], the address the worker serves (the port `--port 0` picked).
//!
//! Process-wide statics rather than the worker's `Rc` state, so that they can
//! be read anywhere (a task, a stream combinator, another thread). A worker
//! drains once and then exits, so the flag is set once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tokio::sync::Notify;

static DRAINING: AtomicBool = AtomicBool::new(false);
static BEGUN: Notify = Notify::const_new();

/// Completes once this worker begins to drain, whatever the reason: a stop
/// (TERM, INT, `prefork-server stop`), its replacement on a reload (HUP), a
/// scale-down (TTOU), its recycling (`--max-requests`, `--max-worker-memory`)
/// or a hot upgrade (USR2). From then on the worker accepts no connection, and
/// it exits once its connections have closed, or at `--graceful-timeout`.
///
/// Completes at once if the drain has begun. Outside a worker (in the master,
/// or before `run_with`) it never completes; nor does it on a fast stop (QUIT,
/// a second TERM) or a stop during the setup, where the worker exits at once.
///
/// ```no_run
/// # async fn stream_events(mut send: impl FnMut(&str)) {
/// let drain = prefork_server::draining();
/// tokio::pin!(drain);
/// loop {
///     tokio::select! {
///         () = &mut drain => return send("bye: the server is restarting"),
///         () = tokio::time::sleep(std::time::Duration::from_secs(1)) => send("tick"),
///     }
/// }
/// # }
/// ```
pub async fn draining() {
    let begun = BEGUN.notified();
    tokio::pin!(begun);
    // Registered before the flag is read: a drain that begins in between
    // still wakes this future.
    begun.as_mut().enable();
    if DRAINING.load(Ordering::Acquire) {
        return;
    }
    begun.await;
}

/// Whether this worker has begun to drain (see [`draining`]).
pub fn is_draining() -> bool {
    DRAINING.load(Ordering::Acquire)
}

/// The worker begins to drain: every [`draining`] future completes.
pub(super) fn begin() {
    DRAINING.store(true, Ordering::Release);
    BEGUN.notify_waiters();
}

/// The address of this worker's socket, set once at its boot.
static LOCAL_ADDR: OnceLock<SocketAddr> = OnceLock::new();

/// The address this worker serves, as bound: with `--port 0`, the port the
/// kernel picked (the one in the ready line). Known from the start of the
/// setup given to `run_with` or `run_with_setup`, and in every handler; `None`
/// outside a worker. (For the address a connection came in on, with its
/// client's, see [`per_connection`](crate::per_connection).)
pub fn local_addr() -> Option<SocketAddr> {
    LOCAL_ADDR.get().copied()
}

/// The worker's socket is `addr` (before the setup runs).
pub(super) fn set_local_addr(addr: SocketAddr) {
    let _ = LOCAL_ADDR.set(addr);
}
