//! Orphans: processes a worker or a command started that outlived their
//! parent. The master is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so
//! they become its children instead of init's, and it can end them: a daemon
//! that a command forks and that calls `setsid` leaves the command's process
//! group, which the master kills when the command exits, but not the
//! master's family.
//!
//! Which command an orphan came from is read from its environment as it was
//! executed (`/proc/<pid>/environ`): a command's descendants inherit the
//! `LISTEN_PID` naming it. An orphan that rewrote its environment is not
//! attributed; every orphan still there ends with the master. A master
//! stops being one once it has handed over to a new one (USR2): what comes
//! after is the new master's.

use nix::unistd::Pid;

use super::process;

/// Makes the orphaned descendants of this process its children (`true`), or
/// no longer (`false`).
pub fn set_subreaper(on: bool) -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(on)
}

/// The children of this process now (live or not).
pub fn children() -> Vec<Pid> {
    process::children(nix::unistd::getpid())
}

/// The live children of this process that `known` does not claim (they are
/// not its workers, commands, admin process or successor): orphans reparented to it.
/// (Zombies are left out: they are dead, and the next reap takes them.)
pub fn reparented(known: impl Fn(Pid) -> bool) -> Vec<Pid> {
    let mut children = children();
    children.retain(|pid| !known(*pid) && !is_zombie(*pid) && !is_a_master(*pid));
    children
}

fn is_zombie(pid: Pid) -> bool {
    // Gone already counts as one.
    process::state(pid).map_or(true, |state| state == 'Z')
}

/// A master started by an upgrade (its environment says which master it
/// took over from), or one of its workers: never an orphan to end.
fn is_a_master(pid: Pid) -> bool {
    environment_has(pid, |entry| entry.starts_with(b"PREFORK_UPGRADE_FROM="))
}

fn environment_has(pid: Pid, wanted: impl Fn(&[u8]) -> bool) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    environ.split(|byte| *byte == 0).any(wanted)
}

/// Whether `orphan` descends from the command that ran as `command`: its
/// environment names it in `LISTEN_PID`.
pub fn descends_from(orphan: Pid, command: Pid) -> bool {
    let entry = format!("LISTEN_PID={command}");
    environment_has(orphan, |line| line == entry.as_bytes())
}

/// `orphan`'s command line, for the log (`sleep 3600`).
pub fn command_line(orphan: Pid) -> String {
    let cmdline = std::fs::read(format!("/proc/{orphan}/cmdline")).unwrap_or_default();
    let words: Vec<_> = cmdline
        .split(|byte| *byte == 0)
        .filter(|word| !word.is_empty())
        .map(String::from_utf8_lossy)
        .collect();
    words.join(" ")
}
