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
//! kill overdue ones and spawn what is due.

mod pool;

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal as Sig;
use nix::unistd::{getpid, Pid};
use tracing::{debug, error, info, warn};

use crate::config::Balance;
use crate::config::Config;
use crate::error::Error;
use crate::ipc::{self, Command, Link, Message};
use crate::listener::Listeners;
use crate::process::{self, human, Exit};
use crate::signals::{Signal, Signals};
use crate::worker::Child;
use pool::{Departure, Pool};

/// What a forked worker runs; returns its exit code.
pub(crate) type WorkerMain<'a> = dyn Fn(Child<'_>) -> i32 + 'a;

/// A worker that drains honours `--graceful-timeout` itself; the master kills it
/// this much later, as a backstop.
const KILL_MARGIN: Duration = Duration::from_secs(1);
/// A fast stop (QUIT, second TERM) kills whatever is left after this.
const FAST_STOP_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Graceful,
    Fast,
}

struct Master<'a> {
    config: &'a Config,
    listeners: &'a Listeners,
    worker_main: &'a WorkerMain<'a>,
    signals: Signals,
    pool: Pool,
    /// The channel to each live worker, by pid.
    links: Vec<(Pid, Link)>,
    /// The most recent reason a worker gave for not booting (for the halt message).
    boot_error: Option<String>,
    stop: Option<Stop>,
    /// Set when the master must exit 1 once every worker is gone.
    halt: Option<Error>,
    announced: bool,
}

/// Supervises workers on `listeners` until a stop completes (Ok) or the master
/// halts (Err, after every worker is gone).
pub(crate) fn run(config: &Config, listeners: &Listeners, worker_main: &WorkerMain<'_>) -> Result<(), Error> {
    let signals = Signals::install().map_err(Error::Signals)?;
    let mut master = Master {
        config,
        listeners,
        worker_main,
        signals,
        pool: Pool::new(config.workers.get(), Instant::now()),
        links: Vec::new(),
        boot_error: None,
        stop: None,
        halt: None,
        announced: false,
    };
    info!(
        "master (pid {}): starting {} workers on {} ({})",
        getpid(),
        config.workers,
        listeners.addr(),
        listeners.balance().as_str()
    );
    master.supervise()
}

impl Master<'_> {
    fn supervise(&mut self) -> Result<(), Error> {
        loop {
            self.spawn_due();
            self.wait()?;
            for signal in self.signals.take() {
                self.handle(signal);
            }
            self.read_links();
            self.reap();
            self.kill_overdue();
            self.hand_over_sockets();
            if self.stop.is_none() && self.pool.first_generation_failed() {
                let cause = self
                    .boot_error
                    .take()
                    .unwrap_or_else(|| "see the worker errors above".into());
                error!("master: every worker failed to boot; halting");
                self.halt = Some(Error::BootFailed { cause });
                self.begin_stop(Stop::Fast);
            }
            if self.stop.is_some() && self.pool.is_empty() {
                info!("master (pid {}): every worker has exited; bye", getpid());
                return self.halt.take().map_or(Ok(()), Err);
            }
            self.announce_once_ready();
        }
    }

    /// Sleeps until a signal, a worker message, or the pool's next deadline.
    fn wait(&mut self) -> Result<(), Error> {
        let timeout = match self.pool.next_wakeup(Instant::now()) {
            // Round up: waking a millisecond early would spin until the deadline.
            Some(wait) => PollTimeout::try_from(wait + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
        fds.extend(
            self.links
                .iter()
                .map(|(_, link)| PollFd::new(link.stream().as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(errno) => Err(Error::Poll(errno)),
        }
    }

    fn handle(&mut self, signal: Signal) {
        match (signal, self.stop) {
            (Signal::Terminate | Signal::Interrupt, None) => self.begin_stop(Stop::Graceful),
            (Signal::Terminate | Signal::Interrupt, Some(_)) | (Signal::Quit, _) => self.begin_stop(Stop::Fast),
            (Signal::Child, _) => {} // reaping runs on every wakeup
            (Signal::Unimplemented(raw), _) => {
                let name = Sig::try_from(raw).map_or("an unknown signal", Sig::as_str);
                info!("master: ignoring {name}: not implemented yet");
            }
        }
    }

    fn begin_stop(&mut self, stop: Stop) {
        let now = Instant::now();
        let (signal, kill_at) = match stop {
            Stop::Graceful => (Sig::SIGTERM, now + self.config.graceful_timeout + KILL_MARGIN),
            Stop::Fast => (Sig::SIGQUIT, now + FAST_STOP_DEADLINE),
        };
        let pids = self.pool.retire_all(kill_at);
        match stop {
            Stop::Graceful => info!(
                "master: graceful stop: {} workers drain, killed after {}",
                pids.len(),
                human(self.config.graceful_timeout)
            ),
            Stop::Fast => info!("master: fast stop: {} workers exit now", pids.len()),
        }
        for pid in pids {
            process::signal(pid, signal);
        }
        self.stop = Some(stop);
    }

    fn spawn_due(&mut self) {
        for slot in self.pool.due(Instant::now()) {
            match self.spawn(slot) {
                Ok(pid) => info!("worker {slot} (pid {pid}) spawned"),
                Err(err @ (Error::Multithreaded { .. } | Error::ThreadCount(_))) => {
                    error!("master: {err}; halting");
                    self.halt = Some(err);
                    return self.begin_stop(Stop::Graceful);
                }
                Err(err) => {
                    let delay = self.pool.on_spawn_failed(slot, Instant::now());
                    error!("worker {slot}: {err}; retrying in {}", human(delay));
                }
            }
        }
    }

    /// Forks a worker for `slot`. The child closes every fd of the master's except
    /// its own listener and its end of the channel, then runs `worker_main`.
    fn spawn(&mut self, slot: usize) -> Result<Pid, Error> {
        let (master_end, worker_end) = ipc::pair().map_err(Error::Channel)?;
        let link = Link::new(master_end).map_err(Error::Channel)?;
        let listener = self.listeners.for_slot(slot);
        let close: Vec<RawFd> = (self.listeners.raw_fds().filter(|fd| *fd != listener.as_raw_fd()))
            .chain(self.links.iter().map(|(_, link)| link.stream().as_raw_fd()))
            .chain([link.stream().as_raw_fd()])
            .collect();
        let (signals, worker_main, config) = (&self.signals, self.worker_main, self.config);
        let master_pid = getpid();
        let pid = process::fork(move || {
            signals.forget_in_child();
            for fd in close {
                // Owned by master structures that are never dropped in this process.
                let _ = nix::unistd::close(fd);
            }
            worker_main(Child {
                slot,
                master_pid,
                listener,
                channel: worker_end,
                config,
            })
        })?;
        self.links.push((pid, link));
        self.pool.on_spawned(slot, pid, Instant::now());
        Ok(pid)
    }

    fn read_links(&mut self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        for (pid, link) in &mut self.links {
            let received = link.receive();
            for message in received.messages {
                match message {
                    Message::Ready => {
                        if let Some(slot) = self.pool.on_ready(*pid, now) {
                            info!("worker {slot} (pid {pid}) ready");
                        }
                    }
                    Message::BootError(text) => {
                        let slot = self.pool.slot_of(*pid).map_or("?".into(), |s| s.to_string());
                        self.boot_error = Some(format!("worker {slot} (pid {pid}): {text}"));
                    }
                }
            }
            if received.closed {
                closed.push(*pid);
            }
        }
        // A closed link would make every poll return at once: drop it now; the
        // exit itself is handled when the pid is reaped.
        self.links.retain(|(pid, _)| !closed.contains(pid));
    }

    fn reap(&mut self) {
        for (pid, exit) in process::reap_exited() {
            self.links.retain(|(linked, _)| *linked != pid);
            let departure = self.pool.on_exit(pid, Instant::now());
            log_departure(pid, exit, departure);
        }
    }

    /// Gives the socket of each slot without a ready worker to a ready sibling, and
    /// takes it back once the slot serves again (reuseport only: a shared socket is
    /// accepted on by every worker anyway).
    fn hand_over_sockets(&mut self) {
        // Before the first ready line every slot is booting at once: nobody to hand to.
        if self.listeners.balance() != Balance::Reuseport || !self.announced {
            return;
        }
        for (slot, pid) in self.pool.releases() {
            self.command(pid, Command::Release(slot));
        }
        for (slot, pid) in self.pool.adoptions() {
            info!("worker {slot} has no ready worker: pid {pid} accepts on its socket meanwhile");
            self.command(pid, Command::Adopt(slot));
        }
    }

    fn command(&self, pid: Pid, command: Command) {
        let Some((_, link)) = self.links.iter().find(|(linked, _)| *linked == pid) else {
            return; // exiting: its departure clears the adoption
        };
        let socket = match command {
            Command::Adopt(slot) => Some(self.listeners.for_slot(slot).as_fd()),
            Command::Release(_) => None,
        };
        if let Err(err) = link.send(command, socket) {
            warn!("master: cannot send {command:?} to pid {pid}: {err}");
        }
    }

    fn kill_overdue(&mut self) {
        for (slot, pid) in self.pool.overdue(Instant::now()) {
            warn!("worker {slot} (pid {pid}) still running at the stop deadline; sending SIGKILL");
            process::signal(pid, Sig::SIGKILL);
        }
    }

    fn announce_once_ready(&mut self) {
        if self.announced || self.stop.is_some() || !self.pool.all_ready() {
            return;
        }
        self.announced = true;
        let (addr, workers, balance) = (
            self.listeners.addr(),
            self.pool.len(),
            self.listeners.balance().as_str(),
        );
        info!("master (pid {}): ready", getpid());
        // Contract: tests and scripts wait for this exact line on stdout.
        println!("prefork-server: listening on {addr} with {workers} workers ({balance})");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
}

/// One line per exit: slot, pid, exit code or signal, uptime, respawn delay.
fn log_departure(pid: Pid, exit: Exit, departure: Departure) {
    match departure {
        Departure::Died {
            slot,
            uptime,
            was_ready,
            respawn_in,
        } => {
            let boot = if was_ready { "" } else { " before it was ready" };
            let respawn = match respawn_in {
                None => String::new(),
                Some(Duration::ZERO) => "; respawning now".into(),
                Some(delay) => format!("; respawning in {} (backing off)", human(delay)),
            };
            warn!(
                "worker {slot} (pid {pid}) {exit} after {}{boot}{respawn}",
                human(uptime)
            );
        }
        Departure::Retired { slot, uptime } if exit == Exit::Code(0) => {
            info!("worker {slot} (pid {pid}) {exit} after {}", human(uptime))
        }
        Departure::Retired { slot, uptime } => {
            warn!("worker {slot} (pid {pid}) {exit} after {}", human(uptime))
        }
        Departure::Unknown => debug!("master: reaped pid {pid}, not a worker ({exit})"),
    }
}
