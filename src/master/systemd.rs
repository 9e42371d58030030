//! What the master tells systemd, and when (the protocol itself is in
//! `crate::sys::sd_notify`): the watchdog keep-alive, and `READY=1` again once a reload
//! (HUP) is over, however it ended (done, aborted, refused).

use std::time::{Duration, Instant};

use crate::sys::sd_notify::Notifier;

pub(super) struct Systemd {
    notifier: Notifier,
    /// When the next `WATCHDOG=1` is due, if systemd asked for them.
    watchdog: Option<(Duration, Instant)>,
    /// A HUP was taken: `READY=1` once no reload runs any more.
    reload_pending: bool,
}

impl Systemd {
    pub fn new(notifier: Notifier, now: Instant) -> Systemd {
        let watchdog = notifier.watchdog.map(|interval| (interval, now));
        Systemd {
            notifier,
            watchdog,
            reload_pending: false,
        }
    }

    pub fn send(&self, state: &str) {
        self.notifier.send(state);
    }

    /// A reload begins (`RELOADING=1`); its end is told by [`Systemd::due`].
    pub fn reloading(&mut self) {
        self.notifier.reloading();
        self.reload_pending = true;
    }

    /// When the master must wake up for systemd, whatever else happens.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.watchdog.map(|(_, next)| next)
    }

    /// What is due as of `now` (`reload_over`: no reload runs, and the master
    /// is not stopping), marked as told; `status` describes the pool.
    pub fn due(&mut self, now: Instant, reload_over: bool, status: impl FnOnce() -> String) -> Vec<String> {
        let mut due = Vec::new();
        if let Some((interval, next)) = &mut self.watchdog {
            if now >= *next {
                due.push("WATCHDOG=1".to_owned());
                *next = now + *interval;
            }
        }
        if self.reload_pending && reload_over {
            self.reload_pending = false;
            due.push(format!("READY=1\nSTATUS={}", status()));
        }
        due
    }

    /// Tells systemd what is due as of `now` (see [`Systemd::due`]).
    pub fn tell(&mut self, now: Instant, reload_over: bool, status: impl FnOnce() -> String) {
        for state in self.due(now, reload_over, status) {
            self.notifier.send(&state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(watchdog: Option<Duration>, now: Instant) -> Systemd {
        let mut notifier = Notifier::from_env();
        notifier.watchdog = watchdog;
        Systemd::new(notifier, now)
    }

    #[test]
    fn the_watchdog_beats_once_per_interval() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut systemd = make(Some(second), start);
        assert_eq!(systemd.next_deadline(), Some(start));
        assert_eq!(systemd.due(start, false, String::new), ["WATCHDOG=1"]);
        assert!(systemd.due(start + second / 2, false, String::new).is_empty());
        assert_eq!(systemd.next_deadline(), Some(start + second));
        assert_eq!(systemd.due(start + second, false, String::new), ["WATCHDOG=1"]);
        assert_eq!(make(None, start).next_deadline(), None);
    }

    #[test]
    fn ready_again_once_a_reload_is_over_and_only_once() {
        let now = Instant::now();
        let mut systemd = make(None, now);
        assert!(
            systemd.due(now, true, || "x".into()).is_empty(),
            "no reload, nothing to say"
        );
        systemd.reload_pending = true; // what `reloading` sets, without a socket
        assert!(systemd.due(now, false, || "x".into()).is_empty(), "still reloading");
        assert_eq!(
            systemd.due(now, true, || "2 workers".into()),
            ["READY=1\nSTATUS=2 workers"]
        );
        assert!(systemd.due(now, true, || "x".into()).is_empty());
    }
}
