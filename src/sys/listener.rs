//! Every socket option decision, made in the master before the first fork.
//!
//! The master keeps every listener open until it stops. A worker's death then
//! only drops the worker's copy of the fd: the accept queue, and the connections
//! already waiting in it, survive and are served by the replacement. (Closing the
//! last fd of a SO_REUSEPORT socket resets everything queued on it.) A stop is
//! the one time the master closes them: see [`Listeners::close_for_stop`].

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use crate::error::Error;

/// How the serving sockets are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One SO_REUSEPORT socket per slot, in one reuseport group.
    PerSlot,
    /// One socket every worker accepts on.
    Shared,
}

impl Layout {
    /// As an old master hands it down, and as the log says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::PerSlot => "reuseport",
            Layout::Shared => "shared",
        }
    }
}

/// The listening sockets, bound and listening. Their blocking mode is each
/// child's to set as it needs it (the Rust workers make them non-blocking, for
/// tokio; exec mode hands a command its socket as `--exec-nonblocking` says).
#[derive(Debug)]
pub struct Listeners {
    sockets: Vec<TcpListener>,
    addr: SocketAddr,
    layout: Layout,
    backlog: u32,
    /// `--admin`: one plain socket every worker accepts on.
    admin: Option<TcpListener>,
    /// `--plain-port`: plain HTTP beside TLS, one socket every worker accepts on.
    plain: Option<TcpListener>,
}

/// The serving sockets to bind: where, how shared, for how many slots.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub addr: SocketAddr,
    pub layout: Layout,
    /// Slots: one socket each with `reuseport`, one for all with `shared`.
    pub slots: usize,
    pub backlog: u32,
}

impl Listeners {
    /// Binds the serving sockets `wanted` asks for: one SO_REUSEPORT socket per
    /// slot, or one shared socket. With port 0 the first socket picks the port
    /// and the others join it. No admin socket.
    pub fn bind_serving(wanted: Wanted) -> Result<Listeners, Error> {
        let Wanted {
            addr: asked,
            layout,
            slots,
            backlog,
        } = wanted;
        let fail = |addr| move |source| Error::Bind { addr, source };
        let count = match layout {
            Layout::PerSlot => slots,
            Layout::Shared => 1,
        };
        let reuseport = layout == Layout::PerSlot;
        if reuseport && asked.port() != 0 {
            // A SO_REUSEPORT bind silently *joins* any other server already
            // listening there with SO_REUSEPORT. A plain bind fails instead, which
            // is the error a user expects.
            probe_free(asked).map_err(fail(asked))?;
        }
        let first = open(asked, reuseport, backlog).map_err(fail(asked))?;
        let addr = first.local_addr().map_err(fail(asked))?;
        let mut sockets = vec![first];
        for _ in 1..count {
            sockets.push(open(addr, reuseport, backlog).map_err(fail(addr))?);
        }
        Ok(Listeners {
            sockets,
            addr,
            layout,
            backlog,
            admin: None,
            plain: None,
        })
    }

    /// [`Listeners::bind_serving`], and the admin socket at `admin`.
    pub fn bind(wanted: Wanted, admin: Option<SocketAddr>) -> Result<Listeners, Error> {
        let admin = admin.map(bind_admin).transpose()?;
        let mut listeners = Listeners::bind_serving(wanted)?;
        listeners.admin = admin;
        Ok(listeners)
    }

    /// Replaces the admin socket (a reload that changes `--admin`); the old one
    /// is returned, to be closed. Workers alive now keep accepting on their own
    /// copy of it until they are replaced.
    pub fn replace_admin(&mut self, admin: Option<TcpListener>) -> Option<TcpListener> {
        std::mem::replace(&mut self.admin, admin)
    }

    /// Replaces the plain port's socket (`--plain-port`), as [`Listeners::replace_admin`] does.
    pub fn replace_plain(&mut self, plain: Option<TcpListener>) -> Option<TcpListener> {
        std::mem::replace(&mut self.plain, plain)
    }

    /// The plain port's socket, if `--plain-port` is on.
    pub fn plain(&self) -> Option<&TcpListener> {
        self.plain.as_ref()
    }

    /// Binds more SO_REUSEPORT sockets on the same address until there are `count`
    /// (scaling up). Sockets are never closed: see the module docs.
    pub fn ensure_slots(&mut self, count: usize) -> Result<(), Error> {
        while self.sockets.len() < count {
            let socket = open(self.addr, true, self.backlog).map_err(|source| Error::Bind {
                addr: self.addr,
                source,
            })?;
            self.sockets.push(socket);
        }
        Ok(())
    }

    /// Changes the backlog of every socket in place: `listen(2)` again on a
    /// listening socket only resizes its queue, nothing queued is lost.
    pub fn set_backlog(&mut self, backlog: u32) -> io::Result<()> {
        for socket in self.sockets.iter().chain(&self.plain) {
            SockRef::from(socket).listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        }
        self.backlog = backlog;
        Ok(())
    }

    /// Takes over sockets handed down by an old master (hot upgrade): the same
    /// socket objects, so nothing queued on them is lost.
    pub fn inherit(
        sockets: Vec<TcpListener>,
        admin: Option<TcpListener>,
        layout: Layout,
        backlog: u32,
    ) -> Result<Listeners, Error> {
        let first = sockets
            .first()
            .ok_or_else(|| Error::Handover(io::Error::other("no socket was handed over")))?;
        let addr = first.local_addr().map_err(Error::Handover)?;
        // Not the slots' sockets: the commands of an old master may still accept
        // on them in blocking mode (each spawn sets its own, see
        // `worker::control::accepting` and `sys::exec::SocketMode`). The admin
        // socket is only ever accepted on by this program's own processes.
        if let Some(socket) = &admin {
            socket.set_nonblocking(true).map_err(Error::Handover)?;
        }
        Ok(Listeners {
            sockets,
            addr,
            layout,
            backlog,
            admin,
            plain: None,
        })
    }

    /// The admin socket, if `--admin` is on.
    pub fn admin(&self) -> Option<&TcpListener> {
        self.admin.as_ref()
    }

    /// Every socket, in slot order.
    pub fn sockets(&self) -> impl Iterator<Item = &TcpListener> {
        self.sockets.iter()
    }

    pub fn slot_count(&self) -> usize {
        self.sockets.len()
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The socket worker `slot` accepts on.
    pub fn for_slot(&self, slot: usize) -> &TcpListener {
        match self.layout {
            Layout::PerSlot => &self.sockets[slot],
            Layout::Shared => &self.sockets[0],
        }
    }

    /// Closes the master's copies of the serving sockets and the plain port's (not the admin one), at
    /// the start of a stop: once the workers have taken what is queued and closed
    /// theirs, new connections are refused instead of waiting in a queue nobody
    /// accepts from. Nothing may ask for a slot's socket afterwards.
    pub fn close_for_stop(&mut self) {
        self.sockets.clear();
        self.plain = None;
    }
}

impl Listeners {
    /// Every fd of these sockets, the admin one included.
    pub fn raw_fds(&self) -> impl Iterator<Item = std::os::fd::RawFd> + '_ {
        use std::os::fd::AsRawFd;
        (self.sockets.iter().chain(&self.admin).chain(&self.plain)).map(AsRawFd::as_raw_fd)
    }
}

/// Connections waiting in a listening socket's accept queue, and its backlog
/// (`TCP_INFO`: for a listener, `tcpi_unacked` is the queue and `tcpi_sacked`
/// the backlog, as `ss -lnt` shows them).
pub fn queue(socket: &TcpListener) -> io::Result<(u32, u32)> {
    use std::os::fd::AsRawFd;
    let info = tcp_info(socket.as_raw_fd(), size_of::<libc::tcp_info>())?;
    Ok((info.tcpi_unacked, info.tcpi_sacked))
}

/// How long an accepted connection waited in the accept queue, in ms: the
/// kernel stamps a connection's "last data sent" when its handshake completes
/// (`tcp_create_openreq_child`), and nothing is sent on it before the accept,
/// so right after the accept `tcpi_last_data_sent` is the time since it
/// joined the queue (at the kernel's tick: 1 to 10 ms). Only the fields up to
/// it are copied out.
pub fn waited_in_queue(fd: std::os::fd::RawFd) -> Option<u32> {
    let wanted = std::mem::offset_of!(libc::tcp_info, tcpi_last_data_sent) + size_of::<u32>();
    tcp_info(fd, wanted).ok().map(|info| info.tcpi_last_data_sent)
}

/// `TCP_INFO` of a TCP socket, its first `len` bytes (the rest zero).
fn tcp_info(fd: std::os::fd::RawFd, len: usize) -> io::Result<libc::tcp_info> {
    // SAFETY: `tcp_info` is plain integers; all zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = len.min(size_of::<libc::tcp_info>()) as libc::socklen_t;
    // SAFETY: getsockopt on a socket this process holds, into a buffer of at
    // least `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// The `--admin` socket: a plain one, accepted on by every worker.
pub fn bind_admin(addr: SocketAddr) -> Result<TcpListener, Error> {
    open(addr, false, 64).map_err(|source| Error::Bind { addr, source })
}

/// The `--plain-port` socket: one, accepted on by every worker (redirects and
/// health checks are few and short: no steering, one queue).
pub fn bind_plain(addr: SocketAddr, backlog: u32) -> Result<TcpListener, Error> {
    open(addr, false, backlog).map_err(|source| Error::Bind { addr, source })
}

fn open(addr: SocketAddr, reuseport: bool, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Restart without waiting for TIME_WAIT connections of the previous run.
    socket.set_reuse_address(true)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Fails with `AddrInUse` if anything listens on `addr`, reuseport or not.
fn probe_free(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&SockAddr::from(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_for(config: &crate::config::Config) -> Result<Listeners, Error> {
        Listeners::bind(config.wanted_sockets(), config.admin)
    }

    fn config(args: &[&str]) -> crate::config::Config {
        crate::config::Config::try_from_args(["prefork-server", "--host", "127.0.0.1"].iter().chain(args)).unwrap()
    }

    #[test]
    fn reuseport_binds_one_socket_per_slot_on_one_port() {
        let listeners = bind_for(&config(&["--port", "0", "--workers", "3"])).unwrap();
        let ports: Vec<u16> = listeners
            .sockets
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|p| *p == listeners.addr().port() && *p != 0));
    }

    #[test]
    fn shared_binds_one_socket() {
        let listeners = bind_for(&config(&["--port", "0", "--workers", "3", "--balance", "shared"])).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(listeners.sockets.len(), 1);
        assert_eq!(listeners.for_slot(2).as_raw_fd(), listeners.for_slot(0).as_raw_fd());
    }

    #[test]
    fn more_slots_join_the_same_port_and_the_backlog_changes_in_place() {
        let mut listeners = bind_for(&config(&["--port", "0", "--workers", "1"])).unwrap();
        listeners.ensure_slots(3).unwrap();
        assert_eq!(listeners.sockets.len(), 3);
        assert_eq!(listeners.for_slot(2).local_addr().unwrap(), listeners.addr());
        listeners.set_backlog(16).unwrap();
    }

    #[test]
    fn a_port_in_use_is_refused_even_with_reuseport() {
        let other = bind_for(&config(&["--port", "0", "--workers", "1"])).unwrap();
        let port = other.addr().port().to_string();
        let err = bind_for(&config(&["--port", &port, "--workers", "2"])).unwrap_err();
        assert!(err.to_string().ends_with("address in use"), "{err}");
    }
}
