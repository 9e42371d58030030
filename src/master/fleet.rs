//! The fleet: the pool's slots, and what the master holds of each live worker
//! (its channel and its scoreboard record) in one table by pid, so that a
//! worker is added and forgotten in one place.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::Signal as Sig;
use nix::unistd::Pid;

use super::pool::Pool;
use super::workers::Order;
use crate::sys::channel::Channel;
use crate::sys::process;

pub(super) struct Fleet {
    pub pool: Pool,
    live: Vec<Live>,
}

/// A forked worker, until it is reaped.
struct Live {
    pid: Pid,
    /// `None` once it hit end of file (the worker is exiting; its reap follows):
    /// a closed channel would make every poll return at once.
    channel: Option<Channel>,
    /// Its record in the scoreboard, released when it is reaped.
    record: usize,
    /// What runs in it: the Rust app, or (exec mode) a command.
    kind: Kind,
}

/// What a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// The Rust app: it reports over its channel and stamps its own record.
    App,
    /// A command (exec mode): the master reads what it says on the notify
    /// socket and keeps its record.
    Exec(Exec),
}

/// What the master knows of a worker running a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Exec {
    /// The inode of its slot's socket, to see it accept (`--exec-ready accepting`).
    pub socket: u64,
    /// The command has been executed (its channel closed without an error).
    pub executed: bool,
    /// It said `READY=1` (with `--exec-ready accepting`, that counts only if
    /// the master may not look at it in `/proc`).
    pub said_ready: bool,
    /// It has been measured under `--max-worker-memory` at least once. A
    /// command does not count its requests, so "before it served anything" is
    /// "before it was ever seen under the limit" for it.
    pub under_limit_once: bool,
}

/// How an order reaches a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// This signal, to the worker.
    Process(Sig),
    /// This signal, to the worker's whole process group.
    Group(Sig),
}

impl Kind {
    /// How `order` is said to a worker of this kind: the Rust app's signal
    /// table, or, for a command, `stop` to stop and SIGKILL to its whole
    /// process group; `None` for what a command is not told.
    pub(super) fn delivery(self, order: Order, stop: Sig) -> Option<Delivery> {
        let delivery = match (order, self) {
            (Order::Drain, Kind::App) => Delivery::Process(Sig::SIGTERM),
            (Order::FastStop, Kind::App) => Delivery::Process(Sig::SIGQUIT),
            (Order::Drain | Order::FastStop, Kind::Exec(_)) => Delivery::Process(stop),
            (Order::Kill, Kind::App) => Delivery::Process(Sig::SIGKILL),
            (Order::Kill, Kind::Exec(_)) => Delivery::Group(Sig::SIGKILL),
            (Order::Abort, _) => Delivery::Process(Sig::SIGABRT),
            (Order::Reopen, Kind::App) => Delivery::Process(Sig::SIGUSR1),
            // A program keeps its own logs; USR1 might well stop it.
            (Order::Reopen, Kind::Exec(_)) => return None,
        };
        Some(delivery)
    }

    /// Its resident memory, as `--max-worker-memory` counts it: a command's
    /// own children count too (gunicorn's workers are its arbiter's).
    pub(super) fn resident_bytes(self, pid: Pid) -> Option<u64> {
        match self {
            Kind::App => process::resident_bytes(pid),
            Kind::Exec(_) => process::family_resident_bytes(pid),
        }
    }
}

impl Fleet {
    pub fn new(pool: Pool) -> Fleet {
        Fleet { pool, live: Vec::new() }
    }

    pub fn add(&mut self, pid: Pid, channel: Channel, record: usize, kind: Kind) {
        self.live.push(Live {
            pid,
            channel: Some(channel),
            record,
            kind,
        });
    }

    /// What `pid` runs; `None` for a pid that is not a live worker.
    /// Whether the worker `pid` has served anything, as the memory limit asks
    /// before it recycles one: the Rust app counts its `requests`; a command
    /// does not, so it has once it was seen under the limit (`under_limit`
    /// now, or before).
    pub fn has_served(&mut self, pid: Pid, requests: u64, under_limit: bool) -> bool {
        match self
            .live
            .iter_mut()
            .find(|live| live.pid == pid)
            .map(|live| &mut live.kind)
        {
            Some(Kind::Exec(exec)) => {
                exec.under_limit_once |= under_limit;
                exec.under_limit_once
            }
            _ => requests > 0,
        }
    }

    pub fn kind(&self, pid: Pid) -> Option<Kind> {
        Some(self.live.iter().find(|live| live.pid == pid)?.kind)
    }

    /// `(pid, what the master knows)` of every worker running a command.
    pub fn execs(&self) -> impl Iterator<Item = (Pid, Exec)> + '_ {
        self.live.iter().filter_map(|live| match live.kind {
            Kind::Exec(exec) => Some((live.pid, exec)),
            Kind::App => None,
        })
    }

    /// What the master knows of `pid`, if it runs a command.
    pub fn exec_mut(&mut self, pid: Pid) -> Option<&mut Exec> {
        match &mut self.live.iter_mut().find(|live| live.pid == pid)?.kind {
            Kind::Exec(exec) => Some(exec),
            Kind::App => None,
        }
    }

    /// The scoreboard record of `pid`, if it runs a command (whose record the
    /// master keeps).
    pub fn exec_record(&self, pid: Pid) -> Option<usize> {
        let live = self.live.iter().find(|live| live.pid == pid)?;
        matches!(live.kind, Kind::Exec(_)).then_some(live.record)
    }

    /// Forgets a reaped worker; returns its scoreboard record, to release.
    pub fn remove(&mut self, pid: Pid) -> Option<usize> {
        let at = self.live.iter().position(|live| live.pid == pid)?;
        Some(self.live.swap_remove(at).record)
    }

    pub fn channel(&self, pid: Pid) -> Option<&Channel> {
        self.live.iter().find(|live| live.pid == pid)?.channel.as_ref()
    }

    /// Every open channel, with its worker's pid.
    pub fn channels_mut(&mut self) -> impl Iterator<Item = (Pid, &mut Channel)> {
        self.live
            .iter_mut()
            .filter_map(|live| Some((live.pid, live.channel.as_mut()?)))
    }

    /// A channel hit end of file: stop polling it.
    pub fn close_channel(&mut self, pid: Pid) {
        if let Some(live) = self.live.iter_mut().find(|live| live.pid == pid) {
            live.channel = None;
        }
    }

    /// The open channels, for the master's poll.
    pub fn channel_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.live
            .iter()
            .filter_map(|live| Some(live.channel.as_ref()?.stream().as_fd()))
    }

    /// `(pid, record)` of every live worker.
    pub fn records(&self) -> impl Iterator<Item = (Pid, usize)> + '_ {
        self.live.iter().map(|live| (live.pid, live.record))
    }

    /// The scoreboard record of the worker `pid`.
    pub fn record(&self, pid: Pid) -> Option<usize> {
        Some(self.live.iter().find(|live| live.pid == pid)?.record)
    }

    pub fn is_live(&self, pid: Pid) -> bool {
        self.live.iter().any(|live| live.pid == pid)
    }
}
