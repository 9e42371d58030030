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

/// Logs to stderr or `--log-file`, as text or JSON, written synchronously by
/// the calling thread: a writer thread would make the master multi-threaded.
/// stderr is written without waiting (see `sys::output`). The server's own
/// lines go to this subscriber whatever the app installed (see `log`).
pub(crate) fn init(config: &crate::Config) -> Result<(), crate::Error> {
    use std::io::IsTerminal;
    let file = match &config.log_file {
        Some(path) => Some(crate::sys::logfile::open(path).map_err(|source| crate::Error::LogFile {
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
    let stderr = crate::sys::output::stderr();
    let dispatch = match (config.log_format, file) {
        (crate::LogFormat::Text, None) => builder.with_writer(stderr).with_ansi(ansi).into(),
        (crate::LogFormat::Text, Some(file)) => builder.with_writer(file).with_ansi(false).into(),
        (crate::LogFormat::Json, None) => builder.json().with_writer(stderr).into(),
        (crate::LogFormat::Json, Some(file)) => builder.json().with_writer(file).into(),
    };
    install(dispatch);
    Ok(())
}

/// One event at `$level` through [`emit`]; the level is checked first, so a
/// disabled event costs no swap of the subscriber.
macro_rules! at_level {
    ($level:ident, $($arg:tt)+) => {
        if ::tracing::level_enabled!(::tracing::Level::$level) {
            $crate::log::emit(|| ::tracing::event!(::tracing::Level::$level, $($arg)+))
        }
    };
}
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::at_level!(ERROR, $($arg)+) };
}
// (`warn` itself is also a built-in attribute: the macro is renamed on export.)
macro_rules! warning {
    ($($arg:tt)+) => { $crate::log::at_level!(WARN, $($arg)+) };
}
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::at_level!(INFO, $($arg)+) };
}
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::at_level!(DEBUG, $($arg)+) };
}

pub(crate) use {at_level, debug, error, info, warning as warn};
