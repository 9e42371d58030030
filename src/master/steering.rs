//! How new connections reach the workers, the master's side: the kernel
//! program in force (`--balance steered`) or why not, the slots it may pick,
//! a command's load measured from its socket's queue, and the socket of a
//! stalled worker lent to a sibling (`steered` and `lending`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::log::{info, warn};

use super::fleet::Kind;
use super::Master;
use crate::config::Balance;
use crate::sys::listener::Layout;
use crate::sys::steering::{self, SlotLoad, Steering};

/// How often the workers' heartbeats and their sockets' queues are looked at.
const CHECK: Duration = Duration::from_millis(100);

/// How often each slot's queue is measured for `/status` and `/metrics`.
const SHOW_EVERY: Duration = Duration::from_secs(1);

/// A ready worker whose heartbeat (every 250 ms, see `worker::serve`) is older
/// than this while connections wait on its socket is stalled: a handler that
/// blocks its thread, say.
const STALLED_AFTER: Duration = Duration::from_millis(600);

/// The master's steering state.
#[derive(Default)]
pub(super) struct Steer {
    /// The program and its maps, once loaded (or taken over from an old master).
    program: Option<Steering>,
    /// Why the program could not be loaded, when one was asked for.
    why_not: Option<String>,
    /// The program is attached to the current sockets' group.
    attached: bool,
    /// `arrange_steering` has run once.
    arranged: bool,
    /// Not before this, the next look at heartbeats and queues.
    next_check: Option<Instant>,
    /// When the queues were last measured for the admin views.
    measured_at: Option<Instant>,
}

impl Steer {
    /// The steering an old master handed down (a hot upgrade), if any.
    pub(super) fn inherited(fds: Option<[OwnedFd; 3]>) -> Steer {
        let Some(fds) = fds else {
            return Steer::default();
        };
        match Steering::inherit(fds) {
            Ok(program) => Steer {
                program: Some(program),
                attached: true,
                ..Steer::default()
            },
            Err(why) => {
                warn!("master: the old master's steering cannot be used: {why}; loading a new program");
                Steer::default()
            }
        }
    }

    /// Each slot's load, for its workers to write.
    pub(super) fn slot_load(&self, slot: usize) -> Option<&'static SlotLoad> {
        self.shared()?.slot(slot)
    }

    /// The shared memory, while the program is attached.
    pub(super) fn shared(&self) -> Option<&'static steering::Shared> {
        self.program.as_ref().filter(|_| self.attached).map(Steering::shared)
    }

    /// The fds a new master takes over (see `sys::steering`).
    pub(super) fn fds(&self) -> Option<[std::os::fd::BorrowedFd<'_>; 3]> {
        self.program.as_ref().map(Steering::fds)
    }

    /// What `--balance` came to, for the admin views.
    pub(super) fn in_force(
        &self,
        balance: Balance,
        layout: Layout,
        commands: bool,
    ) -> crate::sys::scoreboard::SteeringMode {
        use crate::sys::scoreboard::SteeringMode as Mode;
        match (layout, balance) {
            (Layout::Shared, _) => Mode::Shared,
            _ if self.attached => Mode::ByLoad,
            (_, Balance::Steered | Balance::Lending) if !commands => Mode::Lending,
            _ => Mode::Hash,
        }
    }

    /// What the ready line says of it.
    /// (`commands`: exec mode, where a command's socket is never lent.)
    pub(super) fn describe(&self, balance: Balance, layout: Layout, commands: bool) -> String {
        match (layout, balance) {
            (Layout::Shared, _) => "shared".into(),
            (_, Balance::Steered) if self.attached => "reuseport, steered by load".into(),
            (_, Balance::Steered) if commands => "reuseport; not steered by load, see the log".into(),
            (_, Balance::Steered) => {
                "reuseport, lending stalled workers' sockets; not steered by load, see the log".into()
            }
            (_, Balance::Lending) if !commands => "reuseport, lending stalled workers' sockets".into(),
            _ => "reuseport".into(),
        }
    }

    /// When the master must wake for the next look.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.next_check
    }
}

impl Master<'_> {
    /// Attaches the program to the current sockets' group (loading it the
    /// first time `--balance steered` asks for it) with every slot's socket in
    /// its map, or detaches any program from the group for a `--balance` that
    /// does not steer (one an earlier master of these sockets left, too). At
    /// the start, and whenever the sockets or `--balance` change.
    pub(super) fn arrange_steering(&mut self) {
        // A new master changes nothing of the group before it has taken over:
        // the old master steers with it until then, and goes on if this one
        // fails (see `announce_when_ready`).
        if self.origin.old_master.is_some() {
            return;
        }
        let listeners = &self.sockets.listeners;
        if listeners.layout() != Layout::PerSlot {
            // One plain socket: no group to steer (the old group's program
            // goes with its sockets).
            self.steer.attached = false;
            return;
        }
        let Some(first) = listeners.sockets().next() else {
            return;
        };
        let first_time = !std::mem::replace(&mut self.steer.arranged, true);
        if self.config.balance != Balance::Steered {
            if self.steer.attached || first_time {
                if let Err(err) = steering::detach(first.as_fd()) {
                    warn!("master: cannot detach the steering program: {err}");
                }
            }
            if self.steer.attached {
                info!("master: new connections are placed by the kernel's hash");
            }
            self.steer.attached = false;
            return;
        }
        if self.steer.program.is_none() && self.steer.why_not.is_none() {
            match Steering::load() {
                Ok(program) => self.steer.program = Some(program),
                Err(why) => {
                    warn!("master: new connections are not steered by load: {why}; a stalled worker's socket is lent to a sibling instead (--balance lending)");
                    self.steer.why_not = Some(why);
                }
            }
        }
        let Some(program) = &self.steer.program else {
            return;
        };
        let mut failed = put_every_socket(program, listeners);
        if failed.iter().any(|(_, err)| err.raw_os_error() == Some(libc::EBUSY)) {
            // In another program's map: one an earlier master of these
            // sockets attached (systemd keeps the sockets across restarts).
            // Detached, it lets go of them a few milliseconds later.
            info!("master: the sockets are in an earlier steering program's map: detaching it");
            if let Err(err) = steering::detach(first.as_fd()) {
                warn!("master: cannot detach the earlier steering program: {err}");
            }
            for _ in 0..40 {
                std::thread::sleep(Duration::from_millis(5));
                failed = put_every_socket(program, listeners);
                if failed.is_empty() {
                    break;
                }
            }
        }
        if let Some((slot, err)) = failed.first() {
            warn!(
                "master: cannot steer to slot {slot}'s socket: {err}; new connections are placed by the kernel's hash"
            );
            let _ = steering::detach(first.as_fd());
            self.steer.attached = false;
            return;
        }
        match program.attach(first.as_fd()) {
            Ok(()) => {
                if !self.steer.attached {
                    info!("master: new connections are steered by load");
                }
                self.steer.attached = true;
            }
            Err(err) => {
                warn!("master: cannot attach the steering program: {err}; new connections are placed by the kernel's hash");
                self.steer.attached = false;
            }
        }
    }

    /// Every wake-up: the slots the program may pick (those whose worker is
    /// ready and not stalled), if they changed; every [`CHECK`], the stalled
    /// workers and the commands' queues.
    pub(super) fn steer(&mut self) {
        let mode = self.steer.in_force(
            self.config.balance,
            self.sockets.listeners.layout(),
            self.config.command.is_some(),
        );
        self.scoreboard.header().steering.store(mode as u64, Relaxed);
        if self.sockets.listeners.layout() != Layout::PerSlot {
            self.steer.next_check = None;
            return;
        }
        let lends = self.config.balance.lends() && self.config.command.is_none();
        let measures = self.steer.attached && self.config.command.is_some();
        if (lends || measures) && self.steer.next_check.map_or(true, |at| self.now >= at) {
            self.steer.next_check = Some(self.now + CHECK);
            if lends {
                self.find_stalls();
            }
            if measures {
                self.measure_commands();
            }
        } else if !lends && !measures {
            self.steer.next_check = None;
        }
        self.publish_steering();
        if self.steer.measured_at.map_or(true, |at| self.now >= at + SHOW_EVERY) {
            self.steer.measured_at = Some(self.now);
            self.show_queues();
        }
    }

    /// Each slot's queue, what the program sent it, and whether it is
    /// stalled, for `/status` and `/metrics`.
    fn show_queues(&self) {
        let stalled = self.fleet.pool.stalled();
        let shared = self.steer.shared();
        for (slot, socket) in self.sockets.listeners.sockets().enumerate() {
            let Some(stats) = self.scoreboard.slots().get(slot) else {
                break;
            };
            let (queue, backlog) = crate::sys::listener::queue(socket).unwrap_or((0, 0));
            stats.queue.store(u64::from(queue), Relaxed);
            stats.backlog.store(u64::from(backlog), Relaxed);
            let steered = shared
                .and_then(|shared| shared.slot(slot))
                .map_or(0, |load| load.steered.load(Relaxed));
            stats.steered.store(steered, Relaxed);
            stats.stalled.store(u64::from(stalled.contains(&slot)), Relaxed);
        }
    }

    /// Lists the serving slots for the program. Not by a master that has
    /// handed over to a new one (it lists its own), nor by a new one before it
    /// has: the old master's list stands until then.
    fn publish_steering(&mut self) {
        let Some(shared) = self.steer.shared() else {
            return;
        };
        if self.origin.old_master.is_some() || self.upgrade.handed_over() {
            return;
        }
        let serving: Vec<usize> = match self.phase.is_running() {
            true => (self.fleet.pool.ready_workers().into_iter())
                .filter(|(_, _, stalled)| !stalled)
                .map(|(slot, _, _)| slot)
                .collect(),
            false => Vec::new(),
        };
        // Against the memory, not a copy: the other master of a handover may
        // have written it last.
        if serving != shared.listed() {
            shared.publish(&serving);
        }
    }

    /// Marks each ready worker stalled whose heartbeat is late while
    /// connections wait on its socket, and unmarks it once it beats again.
    fn find_stalls(&mut self) {
        let now_ms = crate::sys::scoreboard::monotonic_ms();
        for (slot, pid, was) in self.fleet.pool.ready_workers() {
            let Some(record) = self.fleet.record(pid) else { continue };
            let beat = self.scoreboard.record(record).heartbeat_ms.load(Relaxed);
            let late = now_ms.saturating_sub(beat) > STALLED_AFTER.as_millis() as u64;
            let waiting =
                || crate::sys::listener::queue(self.sockets.listeners.for_slot(slot)).map_or(0, |(queue, _)| queue);
            let stalled = late && (was || waiting() > 0);
            if stalled != was {
                match stalled {
                    true => info!("worker {slot} (pid {pid}) has not beaten for {} ms while connections wait on its socket: lent to a sibling", now_ms.saturating_sub(beat)),
                    false => info!("worker {slot} (pid {pid}) beats again: its socket is its own"),
                }
                self.fleet.pool.set_stalled(slot, stalled);
            }
        }
    }

    /// A command does not write its load: the master measures it, as the
    /// connections waiting on its socket. A stopped one (`SIGSTOP`, a
    /// debugger) is not listed until it runs again.
    fn measure_commands(&mut self) {
        for (slot, pid, was) in self.fleet.pool.ready_workers() {
            if !matches!(self.fleet.kind(pid), Some(Kind::Exec(_))) {
                continue;
            }
            let socket = self.sockets.listeners.for_slot(slot);
            if let (Ok((queue, _)), Some(load)) = (crate::sys::listener::queue(socket), self.steer.slot_load(slot)) {
                load.measured(u64::from(queue));
            }
            let stopped = matches!(crate::sys::process::state(pid), Some('T' | 't'));
            if stopped != was {
                match stopped {
                    true => info!("worker {slot} (pid {pid}) is stopped: new connections go to the others"),
                    false => info!("worker {slot} (pid {pid}) runs again: steered to as before"),
                }
                self.fleet.pool.set_stalled(slot, stopped);
            }
        }
    }
}

/// Puts each slot's socket in the program's map; returns the ones that failed.
fn put_every_socket(program: &Steering, listeners: &crate::sys::listener::Listeners) -> Vec<(usize, std::io::Error)> {
    (listeners.sockets().enumerate())
        .filter_map(|(slot, socket)| program.put(slot, socket.as_fd()).err().map(|err| (slot, err)))
        .collect()
}
