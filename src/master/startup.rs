//! The master's start: from a validated config to the supervision loop. What
//! must fail before anything is bound fails here (a command that cannot run,
//! an unknown user, a pid file that cannot be written); then the sockets are
//! taken over (a hot upgrade), received (systemd) or bound, and the
//! scoreboard is mapped.

use std::os::fd::{AsRawFd, RawFd};

use super::{Entries, Origin};
use crate::config::Config;
use crate::error::Error;
use crate::sys::{listener, process, scoreboard, upgrade};

/// Runs the master on `config` until it stops (Ok) or halts (Err).
pub(crate) fn start(config: Config, entries: Entries<'_>) -> Result<(), Error> {
    // What the process holds before the master opens anything: the app's own
    // files (a log file its subscriber writes to, say), which its workers keep.
    let before = process::open_fds();
    crate::log::init(&config)?;
    if let Some((old, new)) = process::raise_file_limit() {
        crate::log::debug!("master: open file limit raised from {old} to {new} (the hard limit)");
    }
    // Before anything is bound: a command that cannot run, or an unknown user,
    // is a startup error.
    super::exec::check_program(&config)?;
    let run_as = crate::sys::privileges::resolve(config.user.as_deref(), config.group.as_deref())
        .map_err(|cause| Error::RunAs { cause })?;
    if let Some(path) = &config.pid_file {
        crate::sys::pidfile::check(path, std::process::id()).map_err(|source| Error::PidFile {
            path: path.clone(),
            source,
        })?;
    }
    // A config built in code (or changed through a setter) has not had its
    // TLS files read yet.
    let config = match config.tls_unread() {
        true => config.with_tls().map_err(|err| Error::Tls { cause: err.to_string() })?,
        false => config,
    };
    let mut origin = Origin {
        args: std::env::args_os().skip(1).collect(),
        binary: std::env::current_exe().ok(),
        old_master: None,
        steering: None,
        tickets: None,
    };
    let mut plain_inherited = None;
    let listeners = match upgrade::inherited().map_err(Error::Handover)? {
        Some(inherited) => {
            plain_inherited = inherited.plain;
            let count = inherited.sockets.len();
            crate::log::info!(
                "master: taking over {count} sockets from the old master (pid {})",
                inherited.from
            );
            origin.old_master = Some(inherited.ready);
            origin.steering = inherited.steering;
            origin.tickets = inherited.tickets;
            listener::Listeners::inherit(inherited.sockets, inherited.admin, inherited.layout, config.backlog)?
        }
        None => match upgrade::activated().map_err(Error::Activation)? {
            Some(sockets) => {
                let layout = if sockets.len() == 1 {
                    listener::Layout::Shared
                } else {
                    listener::Layout::PerSlot
                };
                let count = sockets.len();
                crate::log::info!(
                    "master: socket activation: {count} sockets from systemd ({})",
                    layout.as_str()
                );
                let admin = config.admin.map(listener::bind_admin).transpose()?;
                listener::Listeners::inherit(sockets, admin, layout, config.backlog)?
            }
            None => listener::Listeners::bind(config.wanted_sockets(), config.admin)?,
        },
    };
    // `--plain-port`: handed over by the old master, or bound (systemd passes
    // only the serving sockets).
    let mut listeners = listeners;
    // An old master's is kept only where this config still wants it (a new
    // master's config may have moved it, or turned it off).
    let wanted = config.plain_addr();
    let keep = |plain: &std::net::TcpListener| {
        let bound = plain.local_addr().ok();
        wanted.is_some_and(|addr| bound == Some(addr) || (addr.port() == 0 && bound.map(|b| b.ip()) == Some(addr.ip())))
    };
    let plain = match plain_inherited {
        Some(plain) if keep(&plain) => Some(plain),
        _ => wanted
            .map(|addr| listener::bind_plain(addr, config.backlog))
            .transpose()?,
    };
    listeners.replace_plain(plain);
    let scoreboard = scoreboard::Scoreboard::create().map_err(Error::Scoreboard)?;
    // ...but not the sockets and the pipe an old master or systemd handed in,
    // which are the master's now, nor the log file (every child keeps it).
    let masters: Vec<RawFd> = (listeners.raw_fds())
        .chain(origin.old_master.as_ref().map(AsRawFd::as_raw_fd))
        .chain(origin.steering.iter().flatten().map(AsRawFd::as_raw_fd))
        .chain(origin.tickets.as_ref().map(AsRawFd::as_raw_fd))
        .chain(crate::sys::logfile::raw_fd())
        .collect();
    let apps = before
        .into_iter()
        .filter(|fd| *fd > 2 && !masters.contains(fd))
        .collect();
    super::run(config, run_as, listeners, origin, scoreboard, apps, entries)
}
