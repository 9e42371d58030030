//! The TLS session-ticket keys: the master makes them in memory (or reads them
//! from `--tls-ticket-key` files), writes them where every worker reads them
//! (`sys::tickets`), replaces the in-memory key every `--tls-ticket-rotation`
//! (the one before still opens tickets for one more period), and hands the
//! page to a new master on USR2.
//!
//! Only the master serving writes: a new master leaves the keys to the old
//! one until it has taken over, so the two never write at once and a
//! rollback finds the keys as they were.

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
        })
    }

    pub(super) fn keys(&self) -> &'static TicketKeys {
        self.memory.keys()
    }

    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.memory.fd()
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.next_rotation
    }

    /// The keys `config` asks for, from `now`: the files' keys, or the
    /// in-memory ones kept (made now if there are none yet, or if they are due).
    pub(super) fn arrange(&mut self, config: &crate::config::Config, now: Instant) {
        let Some(tls) = &config.tls else {
            self.next_rotation = None;
            return;
        };
        let period = config.tls_ticket_rotation;
        let lifetime = u32::try_from(period.as_secs()).unwrap_or(u32::MAX);
        if !tls.ticket_keys.is_empty() {
            self.next_rotation = None;
            let keys = Keys {
                keys: tls.ticket_keys.clone(),
                lifetime,
                made_at: 0,
            };
            self.memory.keys().write(&keys);
            return info!(
                "master: TLS session tickets: {} keys from --tls-ticket-key (the first seals)",
                keys.keys.len()
            );
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
        if age >= period {
            let kept = keys.keys.into_iter().take(1).collect();
            return self.rotate(period, now, kept);
        }
        if keys.lifetime != lifetime {
            keys.lifetime = lifetime;
            self.memory.keys().write(&keys);
        }
        self.next_rotation = Some(now + (period - age));
    }

    /// If the in-memory key is due, a new one seals from now, and the one it
    /// replaces still opens.
    pub(super) fn rotate_if_due(&mut self, config: &crate::config::Config, now: Instant) {
        if !matches!(self.next_rotation, Some(at) if now >= at) {
            return;
        }
        let kept = self.memory.keys().read().map_or(Vec::new(), |keys| keys.keys);
        self.rotate(config.tls_ticket_rotation, now, kept.into_iter().take(1).collect());
    }

    /// A new key first, then `kept` (the one before, which still opens).
    fn rotate(&mut self, period: Duration, now: Instant, kept: Vec<[u8; TICKET_KEY_LEN]>) {
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
