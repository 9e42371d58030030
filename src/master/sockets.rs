//! The master's sockets: the listeners new workers get, the ones a reload moved
//! away from (open until the last worker that may use them is gone), and the
//! addresses the last ready line announced.

use std::net::SocketAddr;

use crate::log::info;
use nix::unistd::Pid;

use crate::sys::listener::Listeners;

pub(super) struct Sockets {
    /// What new workers get.
    pub listeners: Listeners,
    /// Sockets replaced by a reload that changed the address, with the workers
    /// that may still use them: each set closes when the last of those is gone.
    old: Vec<(Listeners, Vec<Pid>)>,
    /// The server, admin and plain addresses of the last ready line; `None` before the first.
    announced: Option<Announced>,
}

type Announced = (SocketAddr, Option<SocketAddr>, Option<SocketAddr>);

/// What the ready line is to say, when it is due.
pub(super) struct Announcement {
    pub first: bool,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// `--plain-port`.
    pub plain: Option<SocketAddr>,
}

impl Sockets {
    pub fn new(listeners: Listeners) -> Sockets {
        Sockets {
            listeners,
            old: Vec::new(),
            announced: None,
        }
    }

    /// Keeps `old` open for `users`, the workers alive now.
    pub fn keep_old(&mut self, old: Listeners, users: Vec<Pid>) {
        self.old.push((old, users));
    }

    /// Closes the old sockets that no live worker can use any more, now that
    /// `reaped` is gone.
    pub fn worker_gone(&mut self, reaped: Pid) {
        for (listeners, users) in &mut self.old {
            users.retain(|pid| *pid != reaped);
            if users.is_empty() {
                info!(
                    "master: closing the old sockets on {}: their last worker has exited",
                    listeners.addr()
                );
            }
        }
        self.old.retain(|(_, users)| !users.is_empty());
    }

    /// A stop: the master's copies of every serving socket close (the admin
    /// one stays until the master exits).
    pub fn close_for_stop(&mut self) {
        self.listeners.close_for_stop();
        self.old.clear();
    }

    /// Whether the first ready line has been printed.
    pub fn announced_once(&self) -> bool {
        self.announced.is_some()
    }

    /// The ready line to print now that every slot serves, if the addresses
    /// differ from the last one's (or there was none); recorded as printed.
    pub fn announcement(&mut self) -> Option<Announcement> {
        let addr = self.listeners.addr();
        let admin = self.listeners.admin().and_then(|admin| admin.local_addr().ok());
        let plain = self.listeners.plain().and_then(|plain| plain.local_addr().ok());
        if self.announced == Some((addr, admin, plain)) {
            return None;
        }
        let first = self.announced.replace((addr, admin, plain)).is_none();
        Some(Announcement {
            first,
            addr,
            admin,
            plain,
        })
    }
}
