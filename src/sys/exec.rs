//! Exec mode, the child's side: from the fork to `execve(2)` of the user's
//! command, with the slot's socket as fd 3 and the environment of systemd's
//! socket activation (`LISTEN_FDS=1`, `LISTEN_PID`, `LISTEN_FDNAMES=http`).
//!
//! Nothing else of the master's goes through: every other fd is closed, every
//! signal disposition is reset to its default (exec keeps an ignored signal
//! ignored, and the master ignores SIGPIPE) and the mask emptied. The program
//! leads its own process group, so that the master can stop its children with
//! it. Before this, `sys::spawn` switched to `--user` and made the child get
//! SIGKILL when the master dies (`PR_SET_PDEATHSIG`).
//!
//! If anything fails before the exec succeeds, the reason goes to the master
//! over the channel (close-on-exec: a successful exec closes it, which is how
//! the master knows) and the child exits 127, as a shell does for a command it
//! cannot run.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;

use nix::unistd::{getpid, setpgid, Pid};

use super::channel::{self, ToMaster};

/// The child's exit code when the command could not be run.
pub const CANNOT_EXEC: i32 = 127;

/// The fd the program finds its socket on (`SD_LISTEN_FDS_START`).
const LISTEN_FD: RawFd = 3;

/// What the master hands an exec child.
pub struct Launch<'a> {
    /// The program and its arguments (the program is looked up in `PATH`).
    pub command: &'a [String],
    /// The slot's listening socket (the master keeps its own copy).
    pub listener: RawFd,
    /// How the socket is handed over (see [`SocketMode`]).
    pub mode: SocketMode,
    /// The child's end of the channel (close-on-exec).
    pub channel: UnixStream,
    /// Added to (or replacing in) the master's environment: `PREFORK_SLOT`,
    /// `NOTIFY_SOCKET`... (`LISTEN_PID` is added here: only the child knows it).
    pub env: Vec<(String, String)>,
}

/// How fd 3 is handed to the program, as systemd's `NoDelay=` and
/// `NonBlocking=` say it.
///
/// `O_NONBLOCK` is a flag of the open file, not of the fd: the master, every
/// command on the same socket (the one it replaces in its slot, all of them
/// with `--balance shared`, an old master's after USR2) share it. Every event
/// loop sets it on that shared file itself, and a program blocked in `accept`
/// on a socket made blocking under it would stall its whole loop, or one
/// expecting a blocking socket would fail at its next `accept`. So the master
/// sets it only for a program that is alone on the socket (`None` otherwise:
/// left as the programs already on it keep it).
#[derive(Debug, Clone, Copy)]
pub struct SocketMode {
    /// `TCP_NODELAY`, which Linux copies to every socket accepted from it
    /// (setting it under another program changes nothing it relies on).
    pub nodelay: bool,
    /// `O_NONBLOCK` on the open file, if this program is alone on it.
    pub nonblocking: Option<bool>,
}

/// Runs `launch.command` in place of this process. Returns only if it could
/// not (the exit code, after the reason was sent to the master).
pub fn exec(launch: Launch<'_>) -> i32 {
    let Launch {
        command,
        listener,
        mode,
        mut channel,
        env,
    } = launch;
    let program = command.first().map_or("", String::as_str);
    match prepare(listener, mode, &mut channel).and_then(|()| run(command, env)) {
        Ok(never) => match never {},
        Err(why) => {
            let reason = format!("cannot run `{program}`: {why}");
            // The master may be gone too; then there is nobody to tell.
            let _ = channel::send(&mut channel, &ToMaster::BootError(reason));
            CANNOT_EXEC
        }
    }
}

/// Everything but the exec, after `sys::spawn` (credentials, death with the
/// master): fds, the socket's mode, process group, signals.
fn prepare(listener: RawFd, mode: SocketMode, channel: &mut UnixStream) -> Result<(), String> {
    place_fds(listener, channel)?;
    set_socket_mode(mode)?;
    setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|err| format!("cannot start a process group: {err}"))?;
    reset_signal_dispositions();
    Ok(())
}

/// The socket to fd 3 (inheritable), every other fd above 2 closed but the
/// channel (close-on-exec), which `channel` refers to afterwards.
fn place_fds(listener: RawFd, channel: &mut UnixStream) -> Result<(), String> {
    // The channel may sit on fd 3 itself: copy it above 3 first.
    // SAFETY: fcntl on an fd this process owns; F_DUPFD_CLOEXEC makes a new fd.
    let copy = unsafe { libc::fcntl(channel.as_raw_fd(), libc::F_DUPFD_CLOEXEC, LISTEN_FD + 1) };
    if copy < 0 {
        return Err(format!("cannot keep the channel: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `copy` is a new fd that nothing else owns.
    let moved = unsafe { UnixStream::from_raw_fd(copy) };
    // The old number is closed below (or taken by the socket): never by its owner.
    std::mem::forget(std::mem::replace(channel, moved));
    if listener != LISTEN_FD {
        // SAFETY: dup2 onto fd 3, which holds nothing this process still needs
        // (the channel was copied above it).
        if unsafe { libc::dup2(listener, LISTEN_FD) } < 0 {
            return Err(format!(
                "cannot put the socket on fd 3: {}",
                std::io::Error::last_os_error()
            ));
        }
    } else {
        // SAFETY: clearing FD_CLOEXEC on an fd this process owns.
        unsafe { libc::fcntl(LISTEN_FD, libc::F_SETFD, 0) };
    }
    super::process::close_all_but(&[LISTEN_FD, copy]);
    Ok(())
}

/// `mode` on fd 3 (see [`SocketMode`]).
fn set_socket_mode(mode: SocketMode) -> Result<(), String> {
    // SAFETY: fd 3 is the socket, placed above; it is only borrowed here.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(LISTEN_FD) };
    let socket = socket2::SockRef::from(&socket);
    socket
        .set_tcp_nodelay(mode.nodelay)
        .map_err(|err| format!("cannot set TCP_NODELAY on the socket: {err}"))?;
    match mode.nonblocking {
        Some(nonblocking) => socket
            .set_nonblocking(nonblocking)
            .map_err(|err| format!("cannot set the socket's blocking mode: {err}")),
        None => Ok(()),
    }
}

/// Every signal back to its default action (exec resets caught ones, but an
/// ignored one stays ignored: the master ignores SIGPIPE, and whatever started
/// the master may have ignored others, real-time ones included). The mask is
/// emptied in [`run`], just before the exec.
fn reset_signal_dispositions() {
    /// The kernel's `struct sigaction` for `rt_sigaction(2)` (x86_64, aarch64).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // The system call, not libc's sigaction(), which refuses libc's own two
    // real-time signals (32 and 33).
    for signal in (1..=libc::SIGRTMAX()).filter(|s| ![libc::SIGKILL, libc::SIGSTOP].contains(s)) {
        // SAFETY: installing the default action runs no code of ours; the
        // struct is the kernel's layout and the size is its sigset's (8).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &raw const default,
                std::ptr::null_mut::<KernelSigaction>(),
                size_of::<u64>(),
            )
        };
    }
}

/// The exec itself: only returns its error.
fn run(command: &[String], env: Vec<(String, String)>) -> Result<std::convert::Infallible, String> {
    let argv = command
        .iter()
        .map(|arg| CString::new(arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "an argument holds a NUL byte".to_string())?;
    let program = argv.first().ok_or("no program")?;
    let envp = environment(env)?;
    // Last: from here a signal takes its default action, as in the program. The
    // system call itself, not libc's wrapper, which leaves libc's own two
    // real-time signals (32 and 33) as they were: blocked, since the fork.
    let empty: u64 = 0;
    // SAFETY: rt_sigprocmask with a valid 8-byte set and no old set to write.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const empty,
            std::ptr::null_mut::<u64>(),
            size_of::<u64>(),
        )
    };
    let err = nix::unistd::execvpe(program, &argv, &envp).unwrap_err();
    Err(err.desc().to_string())
}

/// The master's environment, without what systemd or a supervisor above the
/// master set for the master itself, with `env` and the socket activation's.
fn environment(env: Vec<(String, String)>) -> Result<Vec<CString>, String> {
    const THE_MASTERS: [&str; 6] = [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ];
    let ours = [
        ("LISTEN_FDS".to_string(), "1".to_string()),
        ("LISTEN_PID".to_string(), getpid().to_string()),
        ("LISTEN_FDNAMES".to_string(), "http".to_string()),
    ];
    let replaced: Vec<String> = env.iter().map(|(name, _)| name.clone()).collect();
    let inherited = std::env::vars_os().filter(|(name, _)| {
        let name = name.to_string_lossy();
        !THE_MASTERS.contains(&name.as_ref()) && !replaced.iter().any(|ours| *ours == name)
    });
    let given = ours
        .into_iter()
        .chain(env)
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    inherited
        .chain(given)
        .map(|(name, value)| {
            let mut pair = name.into_vec();
            pair.push(b'=');
            pair.extend(value.into_vec());
            CString::new(pair).map_err(|_| "an environment variable holds a NUL byte".to_string())
        })
        .collect()
}

/// Where `program` would be found by the exec (`PATH`, unless it names a
/// path): checked before anything is bound, so that a typo stops the start
/// with a clear error instead of a loop of failing workers.
pub fn find(program: &str) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = std::path::PathBuf::from(program);
        return match std::fs::metadata(&path) {
            Err(err) => Err(format!("`{program}`: {err}")),
            Ok(_) if !runnable(&path) => Err(format!("`{program}` is not an executable file")),
            Ok(_) => Ok(path),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| runnable(candidate))
        .ok_or_else(|| format!("`{program}` is not found in PATH"))
}
