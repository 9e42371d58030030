//! The server's own log: a subscriber of its own (text or JSON, to stderr or
//! `--log-file`), which every line the server writes goes to, whatever
//! subscriber the app installed. An app that installs one before `run_with`
//! (`tracing_subscriber::fmt().with_env_filter("myapp=debug").init()`, as
//! most axum examples do) keeps its own events; the master's and the
//! workers' lines still reach the server's log, in `--log-format`.
//!
//! Each of the server's events is sent to the server's dispatcher alone
//! (`with_default` around the event: a thread-local swap). Where the app
//! installed nothing, the server's subscriber is the global one too, so the
//! app's events land in the server's log, as they always did.

use std::sync::OnceLock;

use tracing::Dispatch;

/// The server's subscriber, once [`install`] has run.
static SERVER: OnceLock<Dispatch> = OnceLock::new();

/// Runs `event` (one `tracing` macro) with the server's subscriber as the
/// current one.
pub(crate) fn emit(event: impl FnOnce()) {
    match SERVER.get() {
        Some(dispatch) => tracing::dispatcher::with_default(dispatch, event),
        None => event(),
    }
}

/// Makes `dispatch` the server's subscriber, and the global one if the app
/// has not installed its own.
pub(crate) fn install(dispatch: Dispatch) {
    let _ = tracing::dispatcher::set_global_default(dispatch.clone());
    // A second `run_with` in one process keeps the first subscriber.
    let _ = SERVER.set(dispatch);
}

macro_rules! error {
    ($($arg:tt)+) => {
        // The level first: a disabled event costs no swap.
        if ::tracing::level_enabled!(::tracing::Level::ERROR) {
            $crate::log::emit(|| ::tracing::error!($($arg)+))
        }
    };
}
// (`warn` itself is also a built-in attribute: the macro is renamed on export.)
macro_rules! warning {
    ($($arg:tt)+) => {
        // The level first: a disabled event costs no swap.
        if ::tracing::level_enabled!(::tracing::Level::WARN) {
            $crate::log::emit(|| ::tracing::warn!($($arg)+))
        }
    };
}
macro_rules! info {
    ($($arg:tt)+) => {
        // The level first: a disabled event costs no swap.
        if ::tracing::level_enabled!(::tracing::Level::INFO) {
            $crate::log::emit(|| ::tracing::info!($($arg)+))
        }
    };
}
macro_rules! debug {
    ($($arg:tt)+) => {
        // The level first: a disabled event costs no swap.
        if ::tracing::level_enabled!(::tracing::Level::DEBUG) {
            $crate::log::emit(|| ::tracing::debug!($($arg)+))
        }
    };
}

pub(crate) use {debug, error, info, warning as warn};
