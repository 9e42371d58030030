//! Session tickets, sealed and opened with the keys in the master's shared
//! memory (`sys::tickets`) instead of rustls's own `Ticketer`, whose keys are
//! made per process: forked workers would share them until the first rotation
//! and then drift apart, and a client would resume only on the worker that
//! issued its ticket.
//!
//! A ticket is `name (16) | nonce (12) | AES-256-GCM(state) | tag (16)`, the
//! key's name also authenticated. A ticket whose key is gone (rotated out
//! twice, or another server's) does not open, and the client gets a full
//! handshake, as it would from any server.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use crate::sys::tickets::TicketKeys;

const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;

/// The tickets of one worker, with the keys every worker shares.
pub(crate) struct SharedTickets {
    keys: &'static TicketKeys,
    random: SystemRandom,
}

impl std::fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTickets")
    }
}

impl SharedTickets {
    pub(crate) fn new(keys: &'static TicketKeys) -> SharedTickets {
        SharedTickets {
            keys,
            random: SystemRandom::new(),
        }
    }
}

/// The AEAD key of a shared key (its last 32 bytes).
fn aead(key: &[u8; crate::tls::TICKET_KEY_LEN]) -> Option<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, &key[NAME_LEN..])
        .ok()
        .map(LessSafeKey::new)
}

impl ProducesTickets for SharedTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.keys.read().map_or(0, |keys| keys.lifetime)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.read()?;
        let key = keys.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&key[..NAME_LEN]);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        aead(key)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key[..NAME_LEN]),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.read()?;
        let key = keys.keys.iter().find(|key| &key[..NAME_LEN] == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = sealed.to_vec();
        let plain = aead(key)?.open_in_place(nonce, Aad::from(name), &mut opened).ok()?;
        let len = plain.len();
        opened.truncate(len);
        Some(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::tickets::{Keys, TicketMemory};

    #[test]
    fn a_ticket_opens_with_its_key_until_that_key_is_gone() {
        let memory = Box::leak(Box::new(TicketMemory::create().unwrap()));
        let (first, second, third) = ([1u8; 48], [2u8; 48], [3u8; 48]);
        let keys = |keys: Vec<[u8; 48]>| Keys {
            keys,
            lifetime: 60,
            made_at: 1,
        };
        memory.keys().write(&keys(vec![first]));
        let tickets = SharedTickets::new(memory.keys());
        let ticket = tickets.encrypt(b"session state").unwrap();
        assert_eq!(tickets.decrypt(&ticket).unwrap(), b"session state");
        let mut forged = ticket.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert!(tickets.decrypt(&forged).is_none(), "a ticket changed does not open");
        // Rotated once: the old key still opens; twice: it does not.
        memory.keys().write(&keys(vec![second, first]));
        assert_eq!(tickets.decrypt(&ticket).unwrap(), b"session state");
        assert_ne!(tickets.encrypt(b"x").unwrap()[..16], ticket[..16], "the new key seals");
        memory.keys().write(&keys(vec![third, second]));
        assert!(tickets.decrypt(&ticket).is_none());
        assert!(tickets.decrypt(&ticket[..20]).is_none(), "short");
    }
}
