//! Exec mode, the master's side: forking a worker that runs the command, and
//! knowing how it is doing without a channel to it: whether the command was
//! executed (its channel closed without an error), what it says on the notify
//! socket (`READY=1`, `WATCHDOG=1`, `STATUS=`, `STOPPING=1`), and whether it
//! waits on its socket (`--exec-ready accepting`).

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::log::{debug, info, warn};
use nix::unistd::Pid;

use super::fleet::{Exec, Kind};
use super::pool::Departure;
use super::Master;
use crate::config::ExecReady;
use crate::error::Error;
use crate::sys::accepting::Seen;
use crate::sys::channel::{self, Channel};
use crate::sys::notify_socket::{Notice, Notices};
use crate::sys::process::Exit;
use crate::sys::scoreboard::{monotonic_ms, State, NOT_WATCHED};
use crate::sys::spawn;

/// How often a booting worker is looked at for accepting (`/proc` reads).
const ACCEPTING_CHECK: Duration = Duration::from_millis(20);

/// Exec mode's part of the master, apart from the workers themselves (each
/// one's [`Exec`] in the fleet): what it watches, and the admin process.
#[derive(Default)]
pub(super) struct ExecMode {
    /// The `NOTIFY_SOCKET` the commands speak to, bound with the first worker
    /// that runs one.
    notices: Option<Notices>,
    /// `/proc` refused to show a command's fds (said once; its `READY=1`
    /// counts then, see `accepting_now`).
    hidden_warned: bool,
    /// The process that serves `--admin` for the commands.
    pub(super) admin: super::admin::AdminProcess,
}

/// The settings of the Rust app's HTTP handling that a command, which serves
/// HTTP itself, does not get: set with a command, each is named in a warning.
pub(super) fn not_for_commands(config: &crate::config::Config) -> Vec<&'static str> {
    let set = [
        (config.max_requests > 0, "--max-requests"),
        (config.access_log.is_some(), "--access-log"),
        (config.slow_request.is_some(), "--slow-request"),
        (config.max_body_size.is_some(), "--max-body-size"),
        (config.max_connections.is_some(), "--max-connections"),
    ];
    match config.command {
        Some(_) => set.into_iter().filter(|(on, _)| *on).map(|(_, flag)| flag).collect(),
        None => Vec::new(),
    }
}

/// A command whose program cannot be found or run is a startup error.
pub(super) fn check_program(config: &crate::config::Config) -> Result<(), Error> {
    match config.command.as_ref().and_then(|command| command.first()) {
        Some(program) => crate::sys::exec::find(program)
            .map(drop)
            .map_err(|cause| Error::Command { cause }),
        None => Ok(()),
    }
}

impl Master<'_> {
    /// Warns about settings that do nothing for commands (see [`not_for_commands`]).
    pub(super) fn warn_not_for_commands(&self) {
        for flag in not_for_commands(&self.config) {
            crate::log::warn!("master: {flag} does not apply to a command, which serves HTTP itself; ignored");
        }
    }

    /// Binds the notify socket the first time a worker will run a command.
    fn ensure_notices(&mut self) -> Result<(), Error> {
        if self.exec.notices.is_none() {
            self.exec.notices = Some(Notices::bind().map_err(Error::NotifySocket)?);
        }
        Ok(())
    }

    /// Forks a worker for `slot` that executes `command` (see `sys::exec`).
    pub(super) fn fork_exec(
        &mut self,
        slot: usize,
        record: usize,
        command: &[String],
    ) -> Result<(Pid, Channel, Kind), Error> {
        self.ensure_notices()?;
        let notices = self.exec.notices.as_ref().map(|notices| notices.name().to_owned());
        let (master_end, worker_end) = channel::pair().map_err(Error::Channel)?;
        let channel = Channel::new(master_end).map_err(Error::Channel)?;
        let listener = self.sockets.listeners.for_slot(slot);
        let socket = nix::sys::stat::fstat(listener)
            .map(|stat| stat.st_ino)
            .map_err(|errno| Error::Command {
                cause: format!("cannot stat slot {slot}'s socket: {errno}"),
            })?;
        let mut env = vec![
            ("PREFORK_SLOT".to_string(), slot.to_string()),
            (
                "PREFORK_GENERATION".to_string(),
                self.fleet.pool.generation().to_string(),
            ),
        ];
        env.extend(notices.map(|name| ("NOTIFY_SOCKET".to_string(), name)));
        // A Python command prints every thread's traceback to stderr (the
        // log) on the SIGABRT a hung worker gets (`--timeout`), and on a
        // crash. Unless the environment says otherwise.
        if std::env::var_os("PYTHONFAULTHANDLER").is_none() {
            env.push(("PYTHONFAULTHANDLER".to_string(), "1".to_string()));
        }
        if !self.config.timeout.is_zero() {
            // As systemd says it: a program that beats does so every half of it.
            let usec = self.config.timeout.as_micros().to_string();
            env.push(("WATCHDOG_USEC".to_string(), usec));
        }
        let listener = listener.as_raw_fd();
        // Another command on this socket (the one this spawn replaces, a
        // sibling with `--balance shared`, the old master's while this one
        // takes over) keeps it as it is (see `SocketMode`).
        let shared = self.origin.old_master.is_some() || self.fleet.execs().any(|(_, exec)| exec.socket == socket);
        let mode = crate::sys::exec::SocketMode {
            nodelay: self.config.exec_nodelay,
            nonblocking: (!shared).then_some(self.config.exec_nonblocking),
        };
        // Its socket and its end of the channel; `exec` moves them to fd 3
        // and above it.
        let keep = [listener, worker_end.as_raw_fd()];
        let start = spawn::Spawn {
            who: format!("worker {slot}"),
            keep: &keep,
            name: None,
            run_as: self.run_as,
            // KILL, not TERM: a program that drains on TERM (gunicorn's
            // arbiter) would outlive the master by its own timeout.
            death_signal: nix::sys::signal::Signal::SIGKILL,
            failure_code: crate::sys::exec::CANNOT_EXEC,
        };
        let pid = spawn::spawn(&self.signals, start, worker_end, move |channel| {
            crate::sys::exec::exec(crate::sys::exec::Launch {
                command,
                listener,
                mode,
                channel,
                env,
            })
        })?;
        let record = self.scoreboard.record(record);
        record.pid.store(pid.as_raw() as u64, Relaxed);
        // The master keeps the record: a command beats only if it sends WATCHDOG=1.
        record.heartbeat_ms.store(NOT_WATCHED, Relaxed);
        let exec = Exec {
            socket,
            executed: false,
            said_ready: false,
            under_limit_once: false,
        };
        Ok((pid, channel, Kind::Exec(exec)))
    }

    /// A worker's channel closed: for a command, that is the exec succeeding
    /// (unless it said why it could not). Returns whether it is ready by that.
    pub(super) fn on_executed(&mut self, pid: Pid, failed: bool) -> bool {
        let Some(exec) = self.fleet.exec_mut(pid) else {
            return false;
        };
        if failed {
            return false;
        }
        exec.executed = true;
        self.config.exec_ready == ExecReady::Exec
    }

    /// The commands ready since the last wake-up: by what they said on the
    /// notify socket, or seen accepting.
    pub(super) fn commands_ready(&mut self) -> Vec<Pid> {
        let mut ready = self.read_notices();
        ready.extend(self.accepting_now());
        ready
    }

    /// When exec mode needs the master awake: to start the admin process
    /// again, or to look at booting commands for accepting.
    pub(super) fn exec_deadline(&self, now: Instant) -> Option<Instant> {
        let accepting = self.watching_for_accept().then_some(now + ACCEPTING_CHECK);
        self.exec.admin.deadline().into_iter().chain(accepting).min()
    }

    /// What the programs said on the notify socket; returns the pids now ready.
    fn read_notices(&mut self) -> Vec<Pid> {
        let Some(notices) = &self.exec.notices else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        for (pid, notice) in notices.receive() {
            // Only a worker speaks for itself (not its children, not a stranger).
            let Some(record) = self.fleet.exec_record(pid) else {
                continue;
            };
            let record = self.scoreboard.record(record);
            match notice {
                // With `accepting`, a READY=1 is not enough: gunicorn's arbiter
                // says it before its workers have imported the app. The
                // command is ready once it is seen waiting on its socket (or,
                // if the master may not look, by its word: `accepting_now`).
                Notice::Ready if self.config.exec_ready == ExecReady::Accepting => {
                    debug!("worker pid {pid} says READY=1; ready once it waits on its socket (--exec-ready accepting)");
                    if let Some(exec) = self.fleet.exec_mut(pid) {
                        exec.said_ready = true;
                    }
                }
                Notice::Ready => ready.push(pid),
                Notice::Watchdog => record.heartbeat_ms.store(monotonic_ms(), Relaxed),
                Notice::Status(text) => record.set_status(&text),
                Notice::Stopping => info!("worker pid {pid} says it is stopping"),
            }
        }
        ready
    }

    /// Booting commands that now wait on their socket (`--exec-ready accepting`);
    /// one the master may not look at in `/proc` is ready once it said
    /// `READY=1` (said once in the log: the detection is off for it).
    fn accepting_now(&mut self) -> Vec<Pid> {
        let mut ready = Vec::new();
        for (pid, socket) in self.watched_for_accept() {
            match crate::sys::accepting::waits_on(pid, socket) {
                Seen::Waiting => ready.push(pid),
                Seen::NotWaiting => {}
                Seen::Hidden => {
                    if !self.exec.hidden_warned {
                        self.exec.hidden_warned = true;
                        warn!(
                            "master: cannot look at /proc/{pid} (permission denied: no CAP_SYS_PTRACE over another user, \
                             hidepid, or ptrace_scope): a command is ready when it says READY=1 instead of when it is seen accepting"
                        );
                    }
                    if self.fleet.exec_mut(pid).is_some_and(|exec| exec.said_ready) {
                        ready.push(pid);
                    }
                }
            }
        }
        ready
    }

    /// Whether some booting command is being watched for accepting: the
    /// master then wakes every [`ACCEPTING_CHECK`].
    fn watching_for_accept(&self) -> bool {
        !self.watched_for_accept().is_empty()
    }

    /// With `--exec-ready accepting`: (pid, socket inode) of every command
    /// executed and not ready yet.
    fn watched_for_accept(&self) -> Vec<(Pid, u64)> {
        if self.config.exec_ready != ExecReady::Accepting {
            return Vec::new();
        }
        self.fleet
            .execs()
            .filter(|(pid, exec)| exec.executed && self.fleet.pool.is_booting(*pid))
            .map(|(pid, exec)| (pid, exec.socket))
            .collect()
    }

    /// What a command not ready in time failed to do, for the boot error
    /// (empty for the Rust app).
    pub(super) fn unready_hint(&self, pid: Pid) -> &'static str {
        if !self.is_exec(pid) {
            return "";
        }
        match self.config.exec_ready {
            ExecReady::Accepting if self.exec.hidden_warned => {
                ": the master may not look at its /proc/<pid>, and it did not say READY=1 on NOTIFY_SOCKET"
            }
            ExecReady::Accepting => {
                ": it never waited for connections on its socket, fd 3 (does it bind a port of its own? A program that serves in a way not seen from /proc can say READY=1 with --exec-ready notify)"
            }
            ExecReady::Notify => ": it did not say READY=1 on NOTIFY_SOCKET (--exec-ready notify)",
            ExecReady::Exec => "",
        }
    }

    /// A command was reaped: returns its exit as judged (one the master asked
    /// to stop, dead by that very signal, the default action of most
    /// programs, did as it was asked). What it left behind is killed, and a
    /// death before it was ready is the boot error, in its own words if it
    /// said why, else by how it ended.
    pub(super) fn command_reaped(&mut self, pid: Pid, exit: Exit, departure: Departure) -> Exit {
        let exit = match departure {
            Departure::Retired { .. } => exit.asked_to_stop_with(self.config.stop_signal.signal()),
            _ => exit,
        };
        self.end_what_the_command_left(pid);
        if let Departure::Died {
            slot, was_ready: false, ..
        } = departure
        {
            let command = self.config.command.as_deref().unwrap_or_default().join(" ");
            let cause = format!("worker {slot} (pid {pid}): `{command}` {exit} before it was ready");
            self.boot_error.get_or_insert(cause);
        }
        exit
    }

    pub(super) fn is_exec(&self, pid: Pid) -> bool {
        matches!(self.fleet.kind(pid), Some(Kind::Exec(_)))
    }

    /// A command is ready: its record says so (it cannot write it itself).
    pub(super) fn exec_ready(&self, pid: Pid) {
        if let Some(record) = self.fleet.exec_record(pid) {
            self.scoreboard.record(record).set_state(State::Ready);
            // Its load as the steering sees it, from now: nothing queued that
            // it knows of, never stale (the master measures it from here on).
            let load = self.fleet.pool.slot_of(pid).and_then(|slot| self.steer.slot_load(slot));
            if let Some(load) = load {
                load.measured(0);
            }
        }
    }

    /// A command was asked to stop: its record says it drains.
    pub(super) fn exec_draining(&self, pid: Pid) {
        if let Some(record) = self.fleet.exec_record(pid) {
            self.scoreboard.record(record).set_state(State::Draining);
        }
    }

    /// The notify socket, for the master's poll.
    pub(super) fn exec_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.exec.notices.as_ref().map(Notices::fd)
    }
}
