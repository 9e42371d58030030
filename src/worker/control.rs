//! What steers a worker: its own signals (the worker column of the signal table)
//! and the channel from the master (orders, and EOF when the master is gone).

use std::io;
use std::net::TcpListener as StdListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::log::warn;
use tokio::io::Interest;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::sys::channel::{self, ToMaster, ToWorker};

/// How a worker stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// TERM, INT, or the master is gone: stop accepting, drain, exit 0.
    Graceful,
    /// QUIT: exit now.
    Fast,
}

/// One thing the worker is told.
pub enum Event {
    Stop(Stop, &'static str),
    /// USR1: reopen the log files.
    Reopen,
    /// Accept on this slot's socket too, until released.
    Adopt(usize, TcpListener),
    Release(usize),
}

pub struct Control {
    terminate: Signal,
    interrupt: Signal,
    quit: Signal,
    reopen: Signal,
    /// `None` once EOF was seen (or the channel could not be watched).
    master: Option<tokio::net::UnixStream>,
}

impl Control {
    /// Registers TERM, INT and QUIT with tokio. Must run inside the runtime, while
    /// signals are still blocked, so none is lost before the handlers exist.
    pub fn install() -> io::Result<Control> {
        Ok(Control {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            reopen: signal(SignalKind::user_defined1())?,
            master: None,
        })
    }

    /// Also listen to the master on `channel` (non-blocking from here on).
    pub fn watch_master(&mut self, channel: UnixStream) -> io::Result<()> {
        channel.set_nonblocking(true)?;
        self.master = Some(tokio::net::UnixStream::from_std(channel)?);
        Ok(())
    }

    /// Sends `message` to the master, if it is still there. The record is a few
    /// bytes on an otherwise idle channel, so a non-blocking send does not fail
    /// for want of room.
    pub fn tell_master(&self, message: &ToMaster) {
        let Some(master) = &self.master else { return };
        if let Err(err) = master.try_write(message.encode().as_bytes()) {
            warn!("cannot tell the master \"{message}\": {err}");
        }
    }

    /// Waits for a stop, ignoring anything else; says what asked for it.
    pub async fn stopped(&mut self) -> &'static str {
        loop {
            if let Event::Stop(_, why) = self.next().await {
                return why;
            }
        }
    }

    /// Waits for the next event. Cancel-safe: used in `select!` loops.
    pub async fn next(&mut self) -> Event {
        loop {
            let received = tokio::select! {
                _ = self.terminate.recv() => return Event::Stop(Stop::Graceful, "SIGTERM"),
                _ = self.interrupt.recv() => return Event::Stop(Stop::Graceful, "SIGINT"),
                _ = self.quit.recv() => return Event::Stop(Stop::Fast, "SIGQUIT"),
                _ = self.reopen.recv() => return Event::Reopen,
                received = from_master(&self.master) => received,
            };
            match received {
                Ok(Some((ToWorker::Release(slot), _))) => return Event::Release(slot),
                Ok(Some((ToWorker::Adopt(slot), Some(fd)))) => match accepting(StdListener::from(fd)) {
                    Ok(listener) => return Event::Adopt(slot, listener),
                    Err(err) => {
                        warn!("cannot accept on slot {slot}'s socket: {err}; refusing it");
                        self.tell_master(&ToMaster::Refused(slot));
                    }
                },
                Ok(Some((ToWorker::Adopt(slot), None))) => {
                    warn!("slot {slot}'s socket did not arrive (at the file limit?); refusing it");
                    self.tell_master(&ToMaster::Refused(slot));
                }
                Ok(None) | Err(_) => {
                    self.master = None;
                    return Event::Stop(Stop::Graceful, "the master is gone");
                }
            }
        }
    }
}

/// The next order from the master; `Ok(None)` at EOF; never without a channel.
async fn from_master(master: &Option<tokio::net::UnixStream>) -> io::Result<Option<(ToWorker, Option<OwnedFd>)>> {
    let Some(stream) = master else {
        return std::future::pending().await;
    };
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || channel::receive_order(stream.as_fd())) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            received => return received,
        }
    }
}

/// A socket the worker accepts on: its slot's, or an adopted one. O_NONBLOCK,
/// which tokio needs, is set here on the socket's open file, which every copy
/// shares: a command run on the same socket before (exec mode, or an old
/// master's after USR2) may have been handed it blocking. `TCP_NODELAY` is
/// set here, on the listening socket, because Linux copies it to every socket
/// accepted from it: one system call per worker instead of one per connection.
/// (Here and not in the master, so that sockets from systemd or an old master
/// get it too.)
pub fn accepting(listener: StdListener) -> io::Result<TcpListener> {
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker relies on Linux copying TCP_NODELAY from the listening socket.
    #[test]
    fn accepted_sockets_inherit_tcp_nodelay_from_the_listener() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = StdListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let listener = accepting(listener).unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert!(accepted.nodelay().unwrap(), "the accepted socket has TCP_NODELAY");
            drop(client);
        });
    }
}
