//! Exec mode: the master's own `NOTIFY_SOCKET`, on which the programs it runs
//! speak systemd's notify protocol (`sd_notify(3)`) to it, as they would to
//! systemd. One datagram socket for all of them, in the abstract namespace (no
//! file to clean up, reachable whatever user a worker runs as), polled in the
//! master's loop. `SO_PASSCRED` makes the kernel attach the sender's pid to
//! every datagram: a worker can speak only for itself.
//!
//! The abstract namespace has no permissions: any local user can bind any
//! name in it first. So the name has 128 random bits in it, which nobody can
//! guess ahead of the master (a name made from the pid alone could be taken
//! for every pid to come, and exec mode would never start).

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::unistd::Pid;

/// What a program said (the lines the master acts on; others are ignored, as
/// systemd ignores what it does not know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `READY=1`
    Ready,
    /// `WATCHDOG=1`
    Watchdog,
    /// `STATUS=...`
    Status(String),
    /// `STOPPING=1`
    Stopping,
}

pub struct Notices {
    socket: UnixDatagram,
    /// `@name`, as `NOTIFY_SOCKET` gives it to the programs.
    name: String,
}

/// The most datagrams read per wakeup of the master: a program that sends
/// without pause cannot keep the master in this loop (the rest wait for the
/// next wakeup, which comes at once: the socket is still readable).
const MOST_PER_WAKEUP: usize = 1024;

/// The largest datagram read; systemd's own limit is about as much (a `STATUS=`
/// longer than that is cut, not refused).
const DATAGRAM: usize = 4096;

impl Notices {
    /// Binds `@prefork-server/<master pid>/notify-<32 random hex digits>`,
    /// non-blocking, close-on-exec.
    pub fn bind() -> io::Result<Notices> {
        let mut tries = 0;
        let (socket, name) = loop {
            let name = format!("prefork-server/{}/notify-{}", std::process::id(), random_hex()?);
            let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
            match UnixDatagram::bind_addr(&addr) {
                Ok(socket) => break (socket, name),
                // 2^-128 by chance; a few tries more cost nothing.
                Err(err) if err.kind() == io::ErrorKind::AddrInUse && tries < 3 => tries += 1,
                Err(err) => return Err(err),
            }
        };
        socket.set_nonblocking(true)?;
        setsockopt(&socket, sockopt::PassCred, &true)?;
        Ok(Notices {
            socket,
            name: format!("@{name}"),
        })
    }

    /// The value of `NOTIFY_SOCKET` for the programs.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Every datagram waiting, as (sender's pid, what it said).
    pub fn receive(&self) -> Vec<(Pid, Notice)> {
        let mut notices = Vec::new();
        let mut buffer = [0u8; DATAGRAM];
        for _ in 0..MOST_PER_WAKEUP {
            let mut control = nix::cmsg_space!(libc::ucred);
            let mut iov = [IoSliceMut::new(&mut buffer)];
            let received = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let Ok(message) = received else {
                return notices; // EAGAIN: read them all (any other error: next time)
            };
            let sender = message.cmsgs().ok().and_then(|mut cmsgs| {
                cmsgs.find_map(|cmsg| match cmsg {
                    ControlMessageOwned::ScmCredentials(credentials) => Some(Pid::from_raw(credentials.pid())),
                    _ => None,
                })
            });
            let length = message.bytes;
            // Without credentials (not possible with SO_PASSCRED) nobody is believed.
            let Some(sender) = sender else { continue };
            let text = String::from_utf8_lossy(&buffer[..length]);
            notices.extend(parse(&text).into_iter().map(|notice| (sender, notice)));
        }
        notices
    }
}

/// 16 bytes from the kernel's random source, in hex. (`/dev/urandom`, which
/// never waits, even early in a boot before the pool is ready.)
fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The lines of one datagram (`KEY=VALUE`, newline-separated).
pub fn parse(datagram: &str) -> Vec<Notice> {
    datagram
        .lines()
        .filter_map(|line| match line.split_once('=')? {
            ("READY", "1") => Some(Notice::Ready),
            ("WATCHDOG", "1") => Some(Notice::Watchdog),
            ("STOPPING", "1") => Some(Notice::Stopping),
            ("STATUS", text) => Some(Notice::Status(text.to_owned())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_datagram_may_say_several_things() {
        assert_eq!(
            parse("READY=1\nSTATUS=serving 3 clients\nMAINPID=12\nWATCHDOG=1"),
            [
                Notice::Ready,
                Notice::Status("serving 3 clients".into()),
                Notice::Watchdog
            ]
        );
        assert_eq!(parse("READY=0\nWATCHDOG=trigger\nSTOPPING=1"), [Notice::Stopping]);
    }

    #[test]
    fn the_name_cannot_be_guessed_from_the_pid() {
        let (one, two) = (Notices::bind().unwrap(), Notices::bind().unwrap());
        let prefix = format!("@prefork-server/{}/notify-", std::process::id());
        for name in [one.name(), two.name()] {
            let random = name.strip_prefix(&prefix).expect("the pid, then the random part");
            assert_eq!(random.len(), 32);
            assert!(random.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(one.name(), two.name());
    }

    #[test]
    fn the_sender_is_told_by_the_kernel() {
        let notices = Notices::bind().unwrap();
        let name = notices.name().strip_prefix('@').unwrap().to_owned();
        let client = UnixDatagram::unbound().unwrap();
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        client.send_to_addr(b"READY=1\nSTATUS=warm", &addr).unwrap();
        let me = Pid::this();
        assert_eq!(
            notices.receive(),
            [(me, Notice::Ready), (me, Notice::Status("warm".into()))]
        );
        assert!(notices.receive().is_empty(), "nothing more");
    }
}
