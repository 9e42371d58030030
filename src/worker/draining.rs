//! [`draining`]: how a handler learns that its worker has begun to drain, so
//! that a long-lived response (a WebSocket, an event stream, a gRPC watch)
//! can end itself cleanly instead of being cut at `--graceful-timeout`.
//!
//! One flag per process, set once: a worker drains once and then exits. A
//! process-wide static rather than the worker's `Rc` state, so that the
//! future can be made anywhere (a task, a stream combinator, another thread).

use std::sync::atomic::{AtomicBool, Ordering};

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
/// or before `run_with`) it never completes.
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
