//! Resident memory of the workers, as the admin views show it: read from
//! `/proc/<pid>/status` at most once a second per worker. A flood of `/status`
//! or `/metrics` requests then costs the serving workers nothing but the
//! rendering, not one `/proc` read per worker per request.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::sys::process::resident_bytes;

/// How long a reading stays good.
const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Resident {
    /// (pid, when read, bytes); pids that are gone are dropped at the next refresh.
    readings: RefCell<Vec<(u64, Instant, Option<u64>)>>,
}

impl Resident {
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
            .and_then(|pid| resident_bytes(Pid::from_raw(pid)));
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
