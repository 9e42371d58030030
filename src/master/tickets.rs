//! The TLS session-ticket keys: the master makes them in memory (or reads them
//! from `--tls-ticket-key` files), writes them where every worker reads them
//! (`sys::tickets`), replaces the in-memory key every `--tls-ticket-rotation`
//! (the one before still opens tickets for one more period), and hands the
//! page to a new master on USR2.
//!
//! Only the master serving writes: a new master leaves the keys to the old
//! one until it has taken over, and the old one stops writing once it has
//! handed over, so the two never write at once and a rollback finds the keys
//! as they were.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::log::{debug, info, warn};
use crate::sys::tickets::{Keys, TicketKeys, TicketMemory};
use crate::tls::TICKET_KEY_LEN;

/// The ticket keys' page, and when the in-memory key is next replaced.
pub(super) struct Tickets {
    memory: TicketMemory,
    /// `None`: no TLS, or keys from files (replaced only by a HUP).
    next_rotation: Option<Instant>,
    /// The period `next_rotation` was set for.
    period: Duration,
}

/// The keys a config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Wanted {
    /// No TLS: the keys are left as they are (a later HUP may want them).
    Off,
    /// `--tls-ticket-key`: these, the first sealing.
    Files(Vec<[u8; TICKET_KEY_LEN]>),
    /// Made in memory, replaced every `period`.
    Memory { period: Duration },
}

impl Wanted {
    pub(super) fn of(config: &crate::config::Config) -> Wanted {
        match &config.tls {
            None => Wanted::Off,
            Some(tls) if !tls.ticket_keys.is_empty() => Wanted::Files(tls.ticket_keys.clone()),
            Some(_) => Wanted::Memory {
                period: config.tls_ticket_rotation,
            },
        }
    }
}

impl Tickets {
    /// The page an old master handed over, or a new one.
    pub(super) fn new(inherited: Option<OwnedFd>) -> std::io::Result<Tickets> {
        let memory = match inherited.map(TicketMemory::inherit) {
            Some(Ok(memory)) => memory,
            Some(Err(err)) => {
                warn!("master: cannot use the old master's ticket keys ({err}): new ones are made; clients of the old master get full handshakes");
                TicketMemory::create()?
            }
            None => TicketMemory::create()?,
        };
        Ok(Tickets {
            memory,
            next_rotation: None,
            period: Duration::ZERO,
        })
    }

    pub(super) fn keys(&self) -> &'static TicketKeys {
        self.memory.keys()
    }

    /// The memfd, for a new master (`None` where the page is not one).
    pub(super) fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.memory.fd()
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.next_rotation
    }

    /// No more rotations from this master (it has handed over to a new one).
    pub(super) fn stop_rotating(&mut self) {
        self.next_rotation = None;
    }

    /// The keys `wanted` asks for, from `now`: the files' keys; or the
    /// in-memory ones kept, made now if there are none yet, replaced if they
    /// are due, and forgotten if they are older than two periods (a key never
    /// opens tickets for longer).
    pub(super) fn arrange(&mut self, wanted: &Wanted, now: Instant) {
        let period = match wanted {
            Wanted::Off => {
                self.next_rotation = None;
                return;
            }
            Wanted::Files(keys) => {
                self.next_rotation = None;
                self.memory.keys().write(&Keys {
                    keys: keys.clone(),
                    lifetime: 0,
                    made_at: 0,
                });
                return match keys.len() {
                    1 => info!("master: TLS session tickets: the key of --tls-ticket-key"),
                    n => info!("master: TLS session tickets: {n} keys from --tls-ticket-key (the first seals)"),
                };
            }
            Wanted::Memory { period } => *period,
        };
        let lifetime = u32::try_from(period.as_secs()).unwrap_or(u32::MAX);
        // A rotation already scheduled for this period stays as it is (a HUP
        // does not postpone it).
        if self.next_rotation.is_some() && self.period == period {
            return;
        }
        let current = self
            .memory
            .keys()
            .read()
            .filter(|keys| keys.made_at != 0 && !keys.keys.is_empty());
        let Some(mut keys) = current else {
            return self.rotate(period, now, Vec::new());
        };
        let age = Duration::from_secs(unix_now().saturating_sub(keys.made_at));
        if age >= 2 * period {
            // Too old to open anything: start afresh.
            return self.rotate(period, now, Vec::new());
        }
        if age >= period {
            let kept = keys.keys.into_iter().take(1).collect();
            return self.rotate(period, now, kept);
        }
        if keys.lifetime != lifetime {
            keys.lifetime = lifetime;
            self.memory.keys().write(&keys);
        }
        self.period = period;
        self.next_rotation = Some(now + (period - age));
    }

    /// If the in-memory key is due, a new one seals from now, and the one it
    /// replaces still opens.
    pub(super) fn rotate_if_due(&mut self, now: Instant) {
        if !matches!(self.next_rotation, Some(at) if now >= at) {
            return;
        }
        let kept = self.memory.keys().read().map_or(Vec::new(), |keys| keys.keys);
        self.rotate(self.period, now, kept.into_iter().take(1).collect());
    }

    /// A new key first, then `kept` (the one before, which still opens).
    fn rotate(&mut self, period: Duration, now: Instant, kept: Vec<[u8; TICKET_KEY_LEN]>) {
        self.period = period;
        let mut key = [0u8; TICKET_KEY_LEN];
        if let Err(err) = SystemRandom::new().fill(&mut key) {
            // Tickets sealed with the old key go on; the next wake-up tries again.
            self.next_rotation = Some(now + Duration::from_secs(1));
            return warn!("master: cannot make a TLS ticket key ({err}); trying again in 1s");
        }
        let replaced = !kept.is_empty();
        let keys = Keys {
            keys: std::iter::once(key).chain(kept).collect(),
            lifetime: u32::try_from(period.as_secs()).unwrap_or(u32::MAX),
            made_at: unix_now(),
        };
        self.memory.keys().write(&keys);
        self.next_rotation = Some(now + period);
        match replaced {
            true => {
                debug!("master: TLS session tickets: a new key seals; the one before still opens for one more period")
            }
            false => debug!("master: TLS session tickets: a key made in memory, shared by every worker"),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn keys(tickets: &Tickets) -> Keys {
        tickets.keys().read().expect("no write under way")
    }

    #[test]
    fn a_rotation_keeps_the_key_before_and_only_that_one() {
        let mut tickets = Tickets::new(None).unwrap();
        let now = Instant::now();
        tickets.arrange(&Wanted::Memory { period: HOUR }, now);
        let first = keys(&tickets);
        assert_eq!(first.keys.len(), 1);
        assert_eq!(first.lifetime, 3600);
        assert_eq!(tickets.deadline(), Some(now + HOUR));
        tickets.rotate_if_due(now + HOUR / 2);
        assert!(keys(&tickets) == first, "not due yet");
        tickets.rotate_if_due(now + HOUR);
        let second = keys(&tickets);
        assert_eq!(second.keys.len(), 2);
        assert_eq!(second.keys[1], first.keys[0], "the key before still opens");
        tickets.rotate_if_due(now + 2 * HOUR);
        let third = keys(&tickets);
        assert_eq!(third.keys.len(), 2);
        assert_eq!(third.keys[1], second.keys[0]);
        assert!(
            !third.keys.contains(&first.keys[0]),
            "two periods on, the first is gone"
        );
    }

    #[test]
    fn a_reload_keeps_the_keys_and_the_schedule_and_files_replace_them() {
        let mut tickets = Tickets::new(None).unwrap();
        let now = Instant::now();
        let memory = Wanted::Memory { period: HOUR };
        tickets.arrange(&memory, now);
        let made = keys(&tickets);
        tickets.arrange(&memory, now + HOUR / 2);
        assert!(keys(&tickets) == made);
        assert_eq!(
            tickets.deadline(),
            Some(now + HOUR),
            "a HUP does not postpone the rotation"
        );
        tickets.arrange(&Wanted::Files(vec![[7; TICKET_KEY_LEN]]), now);
        assert_eq!(keys(&tickets).keys, vec![[7; TICKET_KEY_LEN]]);
        assert_eq!(tickets.deadline(), None, "keys from files are not rotated");
        // Back to memory: the files' key is not kept (it is not the master's).
        tickets.arrange(&memory, now);
        let back = keys(&tickets);
        assert_eq!(back.keys.len(), 1);
        assert_ne!(back.keys[0], [7; TICKET_KEY_LEN]);
    }

    #[test]
    fn a_new_master_takes_over_the_keys_and_the_age_they_have() {
        let mut old = Tickets::new(None).unwrap();
        let now = Instant::now();
        old.arrange(&Wanted::Memory { period: HOUR }, now);
        let handed = old.fd().map(|fd| fd.try_clone_to_owned().unwrap());
        let mut new = Tickets::new(handed).unwrap();
        new.arrange(&Wanted::Memory { period: HOUR }, now);
        assert!(keys(&new) == keys(&old), "the same page");
        let at = new.deadline().unwrap();
        assert!(at <= now + HOUR && at + Duration::from_secs(2) >= now + HOUR, "{at:?}");
        // Keys older than two periods (a stale page) are not kept at all.
        let mut stale = keys(&old);
        stale.made_at -= 3 * 3600;
        old.memory.keys().write(&stale);
        let mut fresh = Tickets::new(old.fd().map(|fd| fd.try_clone_to_owned().unwrap())).unwrap();
        fresh.arrange(&Wanted::Memory { period: HOUR }, now);
        let after = keys(&fresh);
        assert_eq!(after.keys.len(), 1);
        assert!(!after.keys.contains(&stale.keys[0]));
    }
}
