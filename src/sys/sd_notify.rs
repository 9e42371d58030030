//! systemd's notify protocol (`sd_notify(3)`): datagrams to `$NOTIFY_SOCKET`,
//! sent synchronously by the master (no thread). Without the variable every call
//! does nothing.
//!
//! | when | message |
//! |---|---|
//! | every slot serves | `READY=1`, `STATUS=...` |
//! | HUP | `RELOADING=1`, `MONOTONIC_USEC=...`; then `READY=1` once it is over |
//! | stop | `STOPPING=1` |
//! | `$WATCHDOG_USEC` set | `WATCHDOG=1` every half of it |
//! | an upgrade handed over | `MAINPID=<new master>` (from the old one, still the main pid) |

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::log::warn;

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half of `$WATCHDOG_USEC`, if systemd asked for keep-alives.
    pub watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (`/path` or `@abstract`) and `$WATCHDOG_USEC`. The
    /// variables are left in place: a new master started by USR2 needs them too.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_str()?.to_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
                None => SocketAddr::from_pathname(&path),
            };
            match addr.and_then(|addr| Ok((UnixDatagram::unbound()?, addr))) {
                Ok(target) => Some(target),
                Err(err) => {
                    warn!("master: NOTIFY_SOCKET={path} is unusable: {err}");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID").map_or(true, |pid| pid == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec / 2));
        Notifier { target, watchdog }
    }

    /// Sends `state` (newline-separated `KEY=value` lines). A failure is logged:
    /// systemd may be restarting; the server goes on.
    pub fn send(&self, state: &str) {
        let Some((socket, addr)) = &self.target else { return };
        if let Err(err) = socket.send_to_addr(state.as_bytes(), addr) {
            warn!("master: cannot notify systemd ({}): {err}", state.replace('\n', ", "));
        }
    }

    /// `RELOADING=1` with the `CLOCK_MONOTONIC` timestamp systemd requires.
    pub fn reloading(&self) {
        let usec = crate::sys::scoreboard::monotonic_ms() * 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }
}
