//! Sockets handed in from outside instead of bound: by an old master (hot upgrade,
//! USR2, below) or by systemd (socket activation, [`activated`]).
//!
//! The old master fork-execs the binary on disk with its original arguments. The
//! listening sockets are at fd 3, 4, ... and these variables describe them:
//!
//! | variable | value |
//! |---|---|
//! | `PREFORK_LISTEN_FDS` | how many sockets, starting at fd 3 |
//! | `PREFORK_UPGRADE_LAYOUT` | `reuseport` (a socket per slot) or `shared` (`PREFORK_BALANCE` from a master before steering, which the new one also reads as `--balance`) |
//! | `PREFORK_READY_FD` | a pipe: the new master writes `ready\n` once every worker serves |
//! | `PREFORK_ADMIN_FD` | the `--admin` socket, if there is one |
//! | `PREFORK_UPGRADE_FROM` | the old master's pid (for the logs) |
//! | `PREFORK_STEERING_FD` | the first of the steering's three fds (its maps and program), if it steered |
//! | `PREFORK_TICKETS_FD` | the memory of the TLS session-ticket keys (a memfd) |
//! | `PREFORK_PLAIN_FD` | the `--plain-port` socket, if there is one |
//!
//! The new master inherits the very same socket objects. Nothing is closed or
//! re-bound, so no accept queue is reset and no SO_REUSEPORT group changes. Once
//! it reports ready the old master drains its workers and exits. If it dies, or is
//! not ready within `--upgrade-timeout`, the old master keeps serving (rollback).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use command_fds::{CommandFdExt, FdMapping};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::Pid;
use socket2::{SockRef, Type};

use crate::sys::listener::Layout;
use crate::sys::listener::Listeners;

const FDS: &str = "PREFORK_LISTEN_FDS";
const LAYOUT: &str = "PREFORK_UPGRADE_LAYOUT";
/// What a master before steering named it: also `--balance`'s variable.
const OLD_LAYOUT: &str = "PREFORK_BALANCE";
const READY_FD: &str = "PREFORK_READY_FD";
const FROM: &str = "PREFORK_UPGRADE_FROM";
const ADMIN_FD: &str = "PREFORK_ADMIN_FD";
/// The first of the steering's three fds (its maps and program, see `sys::steering`).
const STEERING_FD: &str = "PREFORK_STEERING_FD";
/// The `--plain-port` socket.
const PLAIN_FD: &str = "PREFORK_PLAIN_FD";
/// The TLS session-ticket keys' memory (see `sys::tickets`).
const TICKETS_FD: &str = "PREFORK_TICKETS_FD";
/// The first inherited fd, as in systemd's `LISTEN_FDS` protocol.
const FIRST_FD: RawFd = 3;

/// A new master started by [`spawn_successor`], not yet ready.
pub struct Successor {
    pub pid: Pid,
    /// Readable when the new master reports ready (or closes it by dying).
    pub ready: File,
}

/// Old master: starts `binary` with `args`, the listeners at fd 3.., and a
/// readiness pipe. Uses `std::process::Command`, which execs at once in the child,
/// so none of this process's state survives into the new master.
pub fn spawn_successor(
    binary: &Path,
    args: &[OsString],
    listeners: &Listeners,
    steering: Option<[BorrowedFd<'_>; 3]>,
    tickets: Option<BorrowedFd<'_>>,
) -> io::Result<Successor> {
    let (ready_read, ready_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let mut mappings = Vec::new();
    for (index, socket) in listeners.sockets().enumerate() {
        let child_fd = FIRST_FD + RawFd::try_from(index).map_err(io::Error::other)?;
        mappings.push(FdMapping {
            parent_fd: socket.try_clone()?.into(),
            child_fd,
        });
    }
    let ready_fd = FIRST_FD + RawFd::try_from(mappings.len()).map_err(io::Error::other)?;
    mappings.push(FdMapping {
        parent_fd: ready_write,
        child_fd: ready_fd,
    });
    let admin_fd = ready_fd + 1;
    if let Some(admin) = listeners.admin() {
        mappings.push(FdMapping {
            parent_fd: admin.try_clone()?.into(),
            child_fd: admin_fd,
        });
    }
    let steering_fd = mappings.last().map_or(FIRST_FD, |mapping| mapping.child_fd) + 1;
    for (index, fd) in steering.iter().flatten().enumerate() {
        mappings.push(FdMapping {
            parent_fd: fd.try_clone_to_owned()?,
            child_fd: steering_fd + index as RawFd,
        });
    }
    let tickets_fd = mappings.last().map_or(FIRST_FD, |mapping| mapping.child_fd) + 1;
    if let Some(tickets) = tickets {
        mappings.push(FdMapping {
            parent_fd: tickets.try_clone_to_owned()?,
            child_fd: tickets_fd,
        });
    }
    let plain_fd = tickets_fd + 1;
    if let Some(plain) = listeners.plain() {
        mappings.push(FdMapping {
            parent_fd: plain.try_clone()?.into(),
            child_fd: plain_fd,
        });
    }
    let mut command = Command::new(binary);
    command
        .args(args)
        .env(FDS, listeners.sockets().count().to_string())
        .env(LAYOUT, listeners.layout().as_str())
        .env(READY_FD, ready_fd.to_string())
        .env(FROM, std::process::id().to_string())
        .env_remove(ADMIN_FD)
        .env_remove(STEERING_FD)
        .env_remove(TICKETS_FD)
        .env_remove(PLAIN_FD)
        .stdin(Stdio::null());
    if steering.is_some() {
        command.env(STEERING_FD, steering_fd.to_string());
    }
    if listeners.admin().is_some() {
        command.env(ADMIN_FD, admin_fd.to_string());
    }
    if listeners.plain().is_some() {
        command.env(PLAIN_FD, plain_fd.to_string());
    }
    if tickets.is_some() {
        command.env(TICKETS_FD, tickets_fd.to_string());
    }
    let last_fd = mappings.last().map_or(FIRST_FD, |mapping| mapping.child_fd);
    command.fd_mappings(mappings).map_err(io::Error::other)?;
    // Nothing else of this master's reaches the new one (an fd it inherited
    // without close-on-exec from whatever started it, say): after the
    // mappings above (hooks run in order), every fd past them is closed.
    // SAFETY: the hook runs in the forked child before the exec and makes one
    // system call, close_range(2), which is async-signal-safe. Before Linux
    // 5.9 it fails, and such fds pass as they did.
    unsafe {
        command.pre_exec(move || {
            libc::syscall(
                libc::SYS_close_range,
                (last_fd + 1) as libc::c_uint,
                libc::c_uint::MAX,
                0,
            );
            Ok(())
        })
    };
    let child = command.spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    // The master's reaping loop collects it like any child: no `wait` on `child`.
    drop(child);
    let ready = File::from(ready_read);
    fcntl(&ready, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok(Successor { pid, ready })
}

/// What a new master inherited from the old one.
pub struct Inherited {
    pub sockets: Vec<TcpListener>,
    pub layout: Layout,
    /// Where to say `ready`.
    pub ready: File,
    pub admin: Option<TcpListener>,
    /// The old master's steering (its two maps and its program), if it steered.
    pub steering: Option<[OwnedFd; 3]>,
    /// The TLS ticket keys' memory (absent from a master before TLS).
    pub tickets: Option<OwnedFd>,
    /// The `--plain-port` socket.
    pub plain: Option<TcpListener>,
    pub from: String,
}

/// New master: the sockets handed over by an upgrade, if this process was started
/// by one. Each is checked to be a listening TCP socket; the variables are removed
/// so that nothing this process starts misreads them.
pub fn inherited() -> io::Result<Option<Inherited>> {
    let Some(count) = std::env::var_os(FDS) else {
        return Ok(None);
    };
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("upgrade handover: {what}"));
    let count: RawFd = count
        .to_str()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad("PREFORK_LISTEN_FDS is not a number"))?;
    let from_before_steering = std::env::var_os(LAYOUT).is_none();
    let given = std::env::var(LAYOUT).or_else(|_| std::env::var(OLD_LAYOUT));
    let layout = match given.as_deref() {
        Ok("shared") => Layout::Shared,
        Ok("reuseport") => Layout::PerSlot,
        _ => return Err(bad("PREFORK_UPGRADE_LAYOUT is missing or unknown")),
    };
    let ready_fd: RawFd = std::env::var(READY_FD)
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad("no PREFORK_READY_FD"))?;
    let from = std::env::var(FROM).unwrap_or_default();
    let admin_fd: Option<RawFd> = std::env::var(ADMIN_FD).ok().and_then(|n| n.parse().ok());
    let steering_fd: Option<RawFd> = std::env::var(STEERING_FD).ok().and_then(|n| n.parse().ok());
    let tickets_fd: Option<RawFd> = std::env::var(TICKETS_FD).ok().and_then(|n| n.parse().ok());
    let plain_fd: Option<RawFd> = std::env::var(PLAIN_FD).ok().and_then(|n| n.parse().ok());
    for name in [FDS, LAYOUT, READY_FD, FROM, ADMIN_FD, STEERING_FD, TICKETS_FD, PLAIN_FD] {
        // Edition 2021: safe; and the master is single-threaded here.
        std::env::remove_var(name);
    }
    if from_before_steering {
        // Set by that master, not by the operator: not passed on.
        std::env::remove_var(OLD_LAYOUT);
    }
    let sockets = inherit_listeners(count)?;
    let ready = File::from(claim_fd(ready_fd)?);
    let admin = admin_fd.map(claim_fd).transpose()?.map(TcpListener::from);
    let steering = match steering_fd {
        Some(fd) => Some([claim_fd(fd)?, claim_fd(fd + 1)?, claim_fd(fd + 2)?]),
        None => None,
    };
    let tickets = tickets_fd.map(claim_fd).transpose()?;
    let plain = plain_fd.map(claim_fd).transpose()?.map(TcpListener::from);
    if let Some(socket) = &plain {
        socket.set_nonblocking(true)?;
    }
    Ok(Some(Inherited {
        sockets,
        layout,
        ready,
        admin,
        steering,
        tickets,
        plain,
        from,
    }))
}

/// systemd socket activation (`sd_listen_fds(3)`): the `$LISTEN_FDS` sockets from
/// fd 3, when `$LISTEN_PID` is this process. The variables are removed, as the
/// protocol asks, so that nothing this process starts misreads them.
pub fn activated() -> io::Result<Option<Vec<TcpListener>>> {
    let (Ok(pid), Ok(count)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    if pid != std::process::id().to_string() {
        return Ok(None); // meant for another process
    }
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Edition 2021: safe; and the master is single-threaded here.
        std::env::remove_var(name);
    }
    let count: RawFd = count
        .parse()
        .map_err(|_| io::Error::other(format!("LISTEN_FDS={count} is not a number")))?;
    inherit_listeners(count).map(Some)
}

/// Takes fds 3..3+count, each checked to be a listening TCP socket.
fn inherit_listeners(count: RawFd) -> io::Result<Vec<TcpListener>> {
    let mut sockets = Vec::new();
    for fd in FIRST_FD..FIRST_FD + count {
        let owned = claim_fd(fd)?;
        let socket = SockRef::from(&owned);
        if !(socket.is_listener()? && socket.r#type()? == Type::STREAM) {
            let message = format!("fd {fd} is not a listening TCP socket");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        sockets.push(TcpListener::from(owned));
    }
    Ok(sockets)
}

/// Takes ownership of an inherited fd and marks it close-on-exec.
fn claim_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a plain integer touches no memory; it fails with EBADF if
    // `fd` is not open, which is how a missing fd is caught before owning it.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(io::Error::other(format!(
            "inherited fd {fd}: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: the old master put this fd here for us (the protocol above), it is
    // open (checked just above), and each fd is claimed exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// New master: tells the old one it is ready (every worker serves).
pub fn report_ready(mut ready: File) {
    if let Err(err) = ready.write_all(b"ready\n") {
        crate::log::warn!("master: cannot tell the old master that this one is ready: {err}");
    }
}
