//! The master: owns the listeners and the worker pool, and never serves requests.
//!
//! Invariant: the master is single-threaded and runtime-free. Workers keep running
//! Rust after `fork` (they allocate, build a tokio runtime), which is only sound if
//! no other thread could have held a lock at the moment of the fork. So: no tokio,
//! no helper threads, no background log writer in this process; `process::fork`
//! checks `Threads: 1` before every fork and refuses otherwise.
//!
//! The loop: sleep in `poll` until a signal, a worker message or the next deadline;
//! then act on recorded signals, read worker messages, reap every exited child,
//! kill overdue ones, hand sockets over, and spawn what is due.
//!
//! The state is in components, each owning its part: `fleet.rs` (the pool and
//! the live workers' channels and records), `sockets.rs` (the listeners, the old
//! ones, what was announced), `upgrade.rs` (a hot upgrade's state), `health.rs`,
//! `systemd.rs` (what systemd is told, and when) and `phase.rs` (running,
//! stopping, halting). What the master does with them:
//!
//! - `workers.rs`: spawn, worker messages, reaping, adoptions.
//! - `change.rs`: stop, reload (HUP), resize (TTIN / TTOU).
//! - `upgrade.rs`: hot binary upgrade (USR2), the old master's side.
//! - `health.rs`: hung workers (`--timeout`) and memory (`--max-worker-memory`).
//! - `orphans.rs`: what workers and commands left behind (the master is a
//!   child subreaper): ended with their command, and at the master's exit.
//! - `exec.rs`: exec mode: forking a command, what it says on the notify
//!   socket, seeing it accept; `admin.rs`: the admin process that serves
//!   `--admin` for the commands.
//! - `pool/`: the bookkeeping all of them consult (pure).

mod admin;
mod change;
mod exec;
mod fleet;
mod health;
mod orphans;
mod phase;
mod pool;
mod sockets;
mod startup;
mod steering;
mod systemd;
mod tickets;
mod upgrade;
mod workers;

use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::log::{error, info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::getpid;

use crate::config::Config;
use crate::error::Error;
use crate::sys::listener::{Layout, Listeners};
use crate::sys::privileges::RunAs;
use crate::sys::scoreboard::{Scoreboard, MASTER_BEAT};
use crate::sys::sd_notify::Notifier;
use crate::sys::signals::{Signal, Signals};
use fleet::Fleet;
use phase::{Phase, Stop};
use pool::Pool;
use sockets::{Announcement, Sockets};
pub(crate) use startup::start;
use systemd::Systemd;
use upgrade::Upgrade;

/// A worker's process name (`comm`, as `ps`, `top` and `pgrep` show it): the
/// master keeps the binary's. It tells a worker from its master, which the
/// control commands check before they signal a pid from a pid file.
pub(crate) const WORKER_PROCESS_NAME: &str = "prefork-worker";

/// What a freshly forked worker is handed by the master: the argument of its
/// entry point. By then it holds only these of the master's fds, runs as
/// `--user`, and dies with the master (see `sys::spawn`).
pub(crate) struct WorkerStart<'a> {
    pub slot: usize,
    /// The slot's socket; the master keeps its own copy open.
    pub listener: &'a std::net::TcpListener,
    /// The worker's end of the channel to the master.
    pub channel: std::os::unix::net::UnixStream,
    pub config: &'a Config,
    /// This worker's scoreboard record (shared memory; it writes, the master reads).
    pub record: &'static crate::sys::scoreboard::Record,
    /// The whole scoreboard, for the admin views.
    pub scoreboard: &'static Scoreboard,
    /// `--admin`: every worker accepts on it.
    pub admin: Option<&'a std::net::TcpListener>,
    /// `--plain-port`: every worker accepts on it too.
    pub plain: Option<&'a std::net::TcpListener>,
    /// `--balance steered`: where the worker writes its slot's load for the
    /// kernel's program (shared memory, no system call).
    pub steer: Option<&'static crate::sys::steering::SlotLoad>,
    /// The TLS session-ticket keys the master shares (read-only here).
    pub tickets: &'static crate::sys::tickets::TicketKeys,
}

/// What a forked worker runs; returns its exit code.
pub(crate) type WorkerMain<'a> = dyn Fn(WorkerStart<'_>) -> i32 + 'a;

/// What the admin process runs (exec mode: the commands do not serve
/// `--admin`): it serves the admin socket from the scoreboard until it is
/// killed; returns its exit code.
pub(crate) type AdminMain = fn(&std::net::TcpListener, &'static Scoreboard, &Config) -> i32;

/// The entry points of the master's children that run this binary's code:
/// handed in by the caller, so that the master never calls into them.
#[derive(Clone, Copy)]
pub(crate) struct Entries<'a> {
    pub worker: &'a WorkerMain<'a>,
    pub admin: AdminMain,
}

/// A worker that drains honours `--graceful-timeout` itself; the master kills it
/// this much later, as a backstop.
const KILL_MARGIN: Duration = Duration::from_secs(1);
/// A fast stop (QUIT, second TERM) kills whatever is left after this.
const FAST_STOP_DEADLINE: Duration = Duration::from_secs(2);

/// How this master was started: what USR2 needs to start the next one, and the
/// old master to tell once ready (if this one is the product of an upgrade).
pub(crate) struct Origin {
    /// The arguments, without the program name.
    pub args: Vec<OsString>,
    /// The binary this process was started from, resolved at startup (before an
    /// upgrade can replace the file).
    pub binary: Option<PathBuf>,
    /// The old master's readiness pipe.
    pub old_master: Option<File>,
    /// The old master's steering (its maps and program), taken over.
    pub steering: Option<[std::os::fd::OwnedFd; 3]>,
    /// The old master's ticket keys (their memory), taken over.
    pub tickets: Option<std::os::fd::OwnedFd>,
}

struct Master<'a> {
    /// The config in force (a reload replaces it); workers are forked with it.
    config: Config,
    /// Its `--user` and `--group`, resolved: what each new worker switches to.
    run_as: Option<RunAs>,
    /// The listeners, the old ones a reload moved away from, what was announced.
    sockets: Sockets,
    entries: Entries<'a>,
    signals: Signals,
    /// The slots, and each live worker's channel and scoreboard record.
    fleet: Fleet,
    /// The most recent reason a worker gave for not booting (for the halt message).
    boot_error: Option<String>,
    /// Running, stopping, or halting on an error (exit 1 once every worker is gone).
    phase: Phase,
    /// This wakeup's clock: read once after each sleep, so that every decision
    /// of a wakeup sees the same time.
    now: Instant,
    origin: Origin,
    /// A hot upgrade (USR2) and its new master, which is this master's child.
    upgrade: Upgrade,
    scoreboard: &'static Scoreboard,
    health: health::Health,
    /// What systemd is told (readiness, reloads, the watchdog), and when.
    systemd: Systemd,
    /// Exec mode: the notify socket, the accepting watch, the admin process.
    exec: exec::ExecMode,
    /// How new connections reach the workers: the kernel program, stalls.
    steer: steering::Steer,
    /// The TLS session-ticket keys every worker reads.
    tickets: tickets::Tickets,
    /// The children the process had before the server ran (not orphans of its).
    children_before: Vec<nix::unistd::Pid>,
    /// What the app had open before `run_with`: its Rust workers keep it.
    app_fds: Vec<std::os::fd::RawFd>,
}

/// Supervises workers on `listeners` until a stop completes (Ok) or the master
/// halts (Err, after every worker is gone).
fn run(
    config: Config,
    run_as: Option<RunAs>,
    mut listeners: Listeners,
    mut origin: Origin,
    scoreboard: &'static Scoreboard,
    app_fds: Vec<std::os::fd::RawFd>,
    entries: Entries<'_>,
) -> Result<(), Error> {
    let signals = Signals::install().map_err(Error::Signals)?;
    let (addr, balance) = (listeners.addr(), config.balance.as_str());
    info!(
        "master (pid {}): starting {} on {addr} (--balance {balance})",
        getpid(),
        workers_count(config.workers.get())
    );
    if let Some(tls) = &config.tls {
        info!("master: TLS on {addr}: {}", tls.describe());
    }
    // Sockets handed over by an upgrade may be more (or fewer) than the slots.
    let workers = config.workers.get();
    let slots = match listeners.layout() {
        Layout::PerSlot => listeners.slot_count().max(workers),
        Layout::Shared => workers,
    };
    if listeners.layout() == Layout::PerSlot {
        listeners.ensure_slots(slots)?;
    }
    let steer = steering::Steer::inherited(origin.steering.take());
    let tickets = tickets::Tickets::new(origin.tickets.take()).map_err(Error::Scoreboard)?;
    let now = Instant::now();
    let mut pool = Pool::new(slots, now);
    pool.resize(workers, now, now); // vacates the extra ones; there is no worker yet
    let mut master = Master {
        fleet: Fleet::new(pool),
        config,
        run_as,
        sockets: Sockets::new(listeners),
        entries,
        signals,
        boot_error: None,
        phase: Phase::Running,
        now,
        origin,
        upgrade: Upgrade::Idle,
        scoreboard,
        health: health::Health::new(now),
        systemd: Systemd::new(Notifier::from_env(), now),
        exec: exec::ExecMode::default(),
        steer,
        tickets,
        children_before: Vec::new(),
        app_fds,
    };
    master.become_subreaper();
    master.arrange_steering();
    master.arrange_tickets();
    master.fleet.pool.set_timeouts(master.timeouts());
    master.publish_pool();
    master.warn_not_for_commands();
    let result = master.supervise();
    master.end_orphans();
    master.remove_pid_file();
    result
}

impl Master<'_> {
    fn supervise(&mut self) -> Result<(), Error> {
        loop {
            self.spawn_due();
            self.keep_admin_process();
            self.settle_reload();
            self.wait()?;
            self.now = Instant::now();
            self.report_dropped_output();
            let header = self.scoreboard.header();
            header.master_beat_ms.store(
                crate::sys::scoreboard::monotonic_ms(),
                std::sync::atomic::Ordering::Relaxed,
            );
            if self.phase.leaving_until().is_some_and(|until| self.now >= until) {
                info!("master: the shutdown delay is over");
                self.begin_stop(Stop::Graceful);
            }
            for signal in self.signals.take() {
                self.handle(signal);
            }
            self.read_channels();
            for pid in self.commands_ready() {
                self.worker_ready(pid);
            }
            self.watch_upgrade();
            self.reap();
            self.kill_overdue();
            self.check_health();
            self.keep_systemd_informed();
            self.abort_late_reload();
            if self.phase.is_running() && self.fleet.pool.first_generation_failed() {
                let cause = self
                    .boot_error
                    .take()
                    .unwrap_or_else(|| "see the worker errors above".into());
                error!("master: every worker failed to boot; halting");
                self.halt(Error::BootFailed { cause }, Stop::Fast);
            }
            if !self.phase.is_running() && self.fleet.pool.is_empty() && self.upgrade.settled() {
                self.stop_admin_process();
                info!("master (pid {}): every worker has exited; bye", getpid());
                return std::mem::replace(&mut self.phase, Phase::Running).into_result();
            }
            self.announce_when_ready();
            // Last: they act on everything above (a new ready line, a retired
            // worker, a vacant slot) before the next, possibly long, sleep.
            self.steer();
            match self.upgrade.handed_over() {
                // The new master writes the keys from now on.
                true => self.tickets.stop_rotating(),
                false => self.tickets.rotate_if_due(self.now),
            }
            self.arrange_adoptions();
            // After every write of this wake-up: the admin views re-render.
            self.scoreboard
                .header()
                .changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Sleeps until a signal, a worker message, or the earliest deadline of the
    /// pool, the upgrade, the health checks and systemd's watchdog. (Its own
    /// clock read: the time since the wakeup's, spent forking say, is not slept.)
    fn wait(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        let watchdog = self.systemd.next_deadline();
        let deadlines = self.upgrade.deadline().into_iter();
        let deadlines = deadlines
            .chain(self.next_health_check())
            .chain(watchdog)
            .chain(self.phase.leaving_until())
            .chain(self.exec_deadline(now))
            .chain(self.steer.deadline())
            .chain(self.tickets.deadline())
            // At least once a beat: `/livez` reads the master's last wake-up.
            .chain([now + MASTER_BEAT]);
        let others = deadlines.map(|at| at.saturating_duration_since(now));
        let timeout = match self.fleet.pool.next_wakeup(now).into_iter().chain(others).min() {
            // Round up: waking a millisecond early would spin until the deadline.
            Some(wait) => PollTimeout::try_from(wait + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
        fds.extend(self.fleet.channel_fds().map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        fds.extend(self.upgrade.fd().map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        fds.extend(self.exec_fd().map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(errno) => Err(Error::Poll(errno.into())),
        }
    }

    fn handle(&mut self, signal: Signal) {
        let leaving = self.phase.leaving_until().is_some();
        match (signal, self.phase.stop()) {
            // A second TERM/INT while leaving rotation skips the rest of the delay.
            (Signal::Terminate | Signal::Interrupt, None) if leaving => self.begin_stop(Stop::Graceful),
            (Signal::Terminate | Signal::Interrupt, None) => self.leave_rotation(signal),
            (Signal::Reload | Signal::AddWorker | Signal::RemoveWorker | Signal::Upgrade, None) if leaving => {
                info!("master: ignoring {signal}: stopping (leaving rotation)");
            }
            (Signal::Terminate | Signal::Interrupt, Some(_)) | (Signal::Quit, _) => self.begin_stop(Stop::Fast),
            (Signal::Child, _) => {} // reaping runs on every wakeup
            (Signal::Reload | Signal::AddWorker | Signal::RemoveWorker | Signal::Upgrade, Some(_)) => {
                info!("master: ignoring {signal}: stopping");
            }
            (Signal::Upgrade, None) => self.upgrade(),
            (Signal::Reload, None) => self.reload(),
            (Signal::AddWorker, None) => self.resize(self.fleet.pool.len() + 1, "TTIN"),
            (Signal::RemoveWorker, None) => self.resize(self.fleet.pool.len().saturating_sub(1), "TTOU"),
            (Signal::Reopen, _) => self.reopen_logs(),
            (Signal::Ignored(_), _) => info!("master: ignoring {signal}: not in the signal table"),
        }
    }

    /// USR1: the master's log file, then every worker's logs (they reopen their
    /// own, each in its process).
    fn reopen_logs(&mut self) {
        if let Err(err) = crate::sys::logfile::reopen() {
            error!("master: cannot reopen the log file: {err}; logging on to the old one");
        }
        let workers = self.fleet.pool.pids();
        for pid in &workers {
            self.order(*pid, workers::Order::Reopen);
        }
        info!(
            "master: SIGUSR1: log files reopened; {} workers told to reopen theirs",
            workers.len()
        );
    }

    /// The watchdog keep-alive, and `READY=1` once a reload (HUP) is over.
    fn keep_systemd_informed(&mut self) {
        let now = self.now;
        let reload_over = !self.fleet.pool.reloading() && self.phase.is_running();
        let pool = &self.fleet.pool;
        let status = || format!("{} workers, generation {}", pool.len(), pool.generation());
        self.systemd.tell(now, reload_over, status);
    }

    /// Writes what the status views show about the pool into the scoreboard.
    fn publish_pool(&self) {
        let header = self.scoreboard.header();
        header
            .workers
            .store(self.fleet.pool.len() as u64, std::sync::atomic::Ordering::Relaxed);
        header.generation.store(
            self.fleet.pool.generation().into(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Prints the ready line once every slot serves, and again whenever a reload
    /// has moved the server to a new address.
    fn announce_when_ready(&mut self) {
        // During a reload the slots may still be on the old sockets.
        let serving = self.fleet.pool.all_ready() && !self.fleet.pool.reloading();
        if !self.phase.is_running() || !serving {
            return;
        }
        let Some(Announcement {
            first,
            addr,
            admin,
            plain,
        }) = self.sockets.announcement()
        else {
            return;
        };
        let workers = self.fleet.pool.len();
        let balance = self.steer.describe(
            self.config.balance,
            self.sockets.listeners.layout(),
            self.config.command.is_some(),
        );
        if first {
            // Before the ready line: whoever waits for it may read the file next.
            // The directory was checked at startup; a disk that filled since
            // halts the start all the same (control commands need the file).
            if let Some(path) = &self.config.pid_file {
                if let Err(source) = crate::sys::pidfile::write(path, std::process::id()) {
                    let path = path.clone();
                    error!(
                        "master: cannot write the pid file {}: {source}; halting",
                        path.display()
                    );
                    return self.halt(Error::PidFile { path, source }, Stop::Graceful);
                }
            }
            info!("master (pid {}): ready", getpid());
        }
        // Contract: tests and scripts wait for this exact line on stdout.
        let admin = admin.map_or(String::new(), |admin| format!(", admin on {admin}"));
        let admin = match plain {
            Some(plain) => format!(", plain HTTP on {plain}{admin}"),
            None => admin,
        };
        let tls = if self.config.tls.is_some() { " (TLS)" } else { "" };
        let line = format!(
            "prefork-server: listening on {addr}{tls} with {} ({balance}){admin}\n",
            workers_count(workers)
        );
        print_ready_line(&line);
        let status = format!("STATUS={} serving on {addr}", workers_count(workers));
        if !first {
            return self.systemd.send(&status);
        }
        self.systemd.send(&format!("READY=1\n{status}"));
        if let Some(old_master) = self.origin.old_master.take() {
            crate::sys::upgrade::report_ready(old_master);
            // Taken over: the group is this master's to steer now, and the
            // ticket keys its to write.
            self.arrange_steering();
            self.arrange_tickets();
        }
    }

    /// Says in the log how many of its lines stderr (or a `--log-file` pipe)
    /// did not take at once (see `sys::output`); the next wakeup says it again
    /// if this line is dropped too.
    fn report_dropped_output(&self) {
        let stderr = crate::sys::output::stderr();
        let dropped = stderr.take_dropped();
        if dropped > 0 && !stderr.is_closed() {
            warn!("master: {dropped} log lines dropped: stderr did not take them at once (its reader stalled)");
        }
        let dropped = crate::sys::logfile::take_dropped();
        if dropped > 0 {
            warn!("master: {dropped} log lines dropped: the --log-file pipe did not take them at once (its reader stalled)");
        }
    }

    /// The ticket keys the config asks for, once this master serves (a new
    /// master leaves them to the old one until it has taken over).
    pub(super) fn arrange_tickets(&mut self) {
        if self.origin.old_master.is_none() && !self.upgrade.handed_over() {
            self.tickets.arrange(&tickets::Wanted::of(&self.config), self.now);
        }
    }

    /// Removes the pid file at exit, unless it names another master by now (the
    /// one this master handed over to).
    fn remove_pid_file(&self) {
        if let Some(path) = &self.config.pid_file {
            crate::sys::pidfile::remove_if_ours(path, std::process::id());
        }
    }
}

/// Prints a ready line on stdout, if stdout takes it at once; a stdout that is
/// closed (`| head -1`) is noted in the log the first time, a stalled one each
/// time.
fn print_ready_line(line: &str) {
    use crate::sys::output::{self, Unwritten};
    match output::stdout().write(line.as_bytes()) {
        Ok(()) => {}
        Err(Unwritten::Full) => {
            warn!("master: stdout did not take the ready line at once (its reader stalled): dropped")
        }
        Err(Unwritten::Closed(Some(err))) => {
            warn!("master: stdout is closed ({err}): ready lines are not printed from now on; the log says `ready`")
        }
        Err(Unwritten::Closed(None)) => {}
    }
}

/// `1 worker`, `2 workers`.
pub(crate) fn workers_count(n: usize) -> String {
    match n {
        1 => "1 worker".into(),
        n => format!("{n} workers"),
    }
}
