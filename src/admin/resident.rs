//! Resident memory of the workers, as the admin views show it: read from
//! `/proc/<pid>/status` at most once a second per worker. A flood of `/status`
//! or `/metrics` requests then costs the serving workers nothing but the
//! rendering, not one `/proc` read per worker per request.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::sys::process::{family_resident_bytes, resident_bytes};

/// How long a reading stays good.
const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Resident {
    /// (pid, when read, bytes); pids that are gone are dropped at the next refresh.
    readings: RefCell<Vec<(u64, Instant, Option<u64>)>>,
    /// Exec mode: a worker's memory is its command's and that of the processes
    /// it started, as `--max-worker-memory` counts it.
    family: bool,
}

impl Resident {
    /// Readings of each worker alone, or (`family`) with its descendants.
    pub fn new(family: bool) -> Resident {
        Resident {
            readings: RefCell::default(),
            family,
        }
    }

    /// The resident bytes of `pid`, at most a second old.
    pub fn of(&self, pid: u64) -> Option<u64> {
        let now = Instant::now();
        let mut readings = self.readings.borrow_mut();
        if let Some((_, at, bytes)) = readings.iter().find(|(known, ..)| *known == pid) {
            if now.duration_since(*at) < FRESH_FOR {
                return *bytes;
            }
        }
        // A stale reading, or a new pid: read it, and forget what is stale.
        readings.retain(|(known, at, _)| *known != pid && now.duration_since(*at) < FRESH_FOR * 10);
        let bytes = i32::try_from(pid)
            .ok()
            .map(Pid::from_raw)
            .and_then(|pid| match self.family {
                false => resident_bytes(pid),
                true => family_resident_bytes(pid),
            });
        readings.push((pid, now, bytes));
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_reused_within_a_second() {
        let resident = Resident::default();
        let me = u64::from(std::process::id());
        let first = resident.of(me).expect("this process has a resident size");
        let _grow: Vec<u8> = vec![1; 64 << 20]; // 64 MiB more, resident
        assert_eq!(resident.of(me), Some(first), "cached");
        assert_eq!(resident.of(u64::from(u32::MAX)), None, "no such pid");
    }
}
