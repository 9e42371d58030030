//! One way to start a child of the master, for every kind of child: a worker,
//! a command before its exec, the admin process. A [`Spawn`] says what the
//! child keeps of the master's fds, its process name, who it runs as and the
//! signal it gets when the master dies; [`spawn`] forks and, in the child,
//! applies it in the one order that works, then runs the child's entry point.
//!
//! The order: forget the master's handlers and fds (before anything could use
//! them); the name; the user switch; then `PR_SET_PDEATHSIG`, after the
//! switch, which clears it; then a check that the master is still the parent,
//! since the request covers only deaths after it is made.

use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;

use nix::sys::signal::Signal;
use nix::unistd::{getpid, getppid, Pid};

use super::channel::{self, ToMaster};
use super::privileges::RunAs;
use super::process::{self, exit_code};
use super::signals::Signals;
use crate::error::Error;

/// How a child of the master starts.
pub struct Spawn<'a> {
    /// Who it is, for the log (`worker 3`, `admin process`); its pid is added.
    pub who: String,
    /// The master's fds it needs (its socket, its channel); every other one
    /// but the standard streams and the log file is closed.
    pub keep: &'a [RawFd],
    /// Its `comm`, as `ps` shows it; `None`: the binary's (an exec names its own).
    pub name: Option<&'static str>,
    /// `--user`/`--group`: the ids it switches to; `None`: the master's.
    pub run_as: Option<RunAs>,
    /// What the kernel sends it when the master dies.
    pub death_signal: Signal,
    /// Its exit code if it cannot start (the user switch failed).
    pub failure_code: i32,
}

/// What a child carries from the fork to its entry point; for one with a
/// channel to the master, that channel is where it reports a failed start.
pub trait Carried {
    /// The channel to the master, if the child has one.
    fn channel(&mut self) -> Option<&mut UnixStream>;
}

impl Carried for UnixStream {
    fn channel(&mut self) -> Option<&mut UnixStream> {
        Some(self)
    }
}

/// The admin process has no channel: its failures go to the log alone.
impl Carried for () {
    fn channel(&mut self) -> Option<&mut UnixStream> {
        None
    }
}

/// Forks a child that starts as `spec` says, then runs `entry(carried)` and
/// exits with the code it returns. A child that cannot start says why in the
/// log and on its channel, if it has one, and exits with `spec.failure_code`;
/// one whose master died already exits 0: there is nobody left to serve.
pub fn spawn<C: Carried>(
    signals: &Signals,
    spec: Spawn<'_>,
    mut carried: C,
    entry: impl FnOnce(C) -> i32,
) -> Result<Pid, Error> {
    let master = getpid();
    process::fork(move || {
        process::forget_the_master(signals, spec.keep);
        let who = format!("{} (pid {})", spec.who, getpid());
        if let Some(name) = spec.name {
            process::name_process(name);
        }
        if let Some(run_as) = spec.run_as {
            if let Err(err) = super::privileges::switch(run_as) {
                let reason = format!("cannot switch to uid {}, gid {}: {err}", run_as.uid, run_as.gid);
                crate::log::error!("{who}: {reason}");
                if let Some(channel) = carried.channel() {
                    // The master may be gone too; the exit code says the same.
                    let _ = channel::send(channel, &ToMaster::BootError(reason));
                }
                return spec.failure_code;
            }
        }
        if let Err(why) = die_with(master, spec.death_signal) {
            crate::log::info!("{who}: {why}; exiting");
            return exit_code::OK;
        }
        entry(carried)
    })
}

/// Asks the kernel for `signal` when `master` dies, then checks it has not
/// died already.
fn die_with(master: Pid, signal: Signal) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(signal).map_err(|err| format!("cannot set PR_SET_PDEATHSIG: {err}"))?;
    if getppid() != master {
        return Err("the master died before this child started".into());
    }
    Ok(())
}
