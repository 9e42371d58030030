//! The channel between the master and one worker: a `SOCK_SEQPACKET` socket pair
//! made before the fork. Each message is one record ending in `\n`; a record can
//! carry one fd (`SCM_RIGHTS`), which stays attached to its own message.
//!
//! - Worker → master: `ready`, `boot-error <text>`: the master knows when a worker
//!   serves and why one could not start.
//! - Master → worker: `adopt <slot>` with the slot's socket, `release <slot>`: a
//!   worker accepts on a sibling slot's socket while that slot has no ready worker,
//!   so the connections queued there are served instead of waiting.
//! - EOF tells the worker that the master is gone (no orphans, even where
//!   `PR_SET_PDEATHSIG` does not fire).
//!
//! Both ends are wrapped in `UnixStream` for its `Read`/`Write`: on a seqpacket
//! socket they are `recv`/`send` of whole records.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

/// A new channel: (master end, worker end). Close-on-exec: only a fork inherits it.
pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
    let (master, worker) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    Ok((UnixStream::from(master), UnixStream::from(worker)))
}

/// A message from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToMaster {
    /// Runtime built, handlers installed, the service made: accepting now.
    Ready,
    /// Could not start; the text says why. The worker exits with code 3 next.
    BootError(String),
    /// Served its `--max-requests`: please replace me (ready first, then I drain).
    Recycle,
    /// Could not take the socket of this slot (at its file limit, say): offer
    /// it elsewhere.
    Refused(usize),
}

impl ToMaster {
    pub fn encode(&self) -> String {
        match self {
            ToMaster::Ready => "ready\n".into(),
            ToMaster::Recycle => "recycle\n".into(),
            ToMaster::Refused(slot) => format!("refused {slot}\n"),
            // One line per message: a multi-line error is folded.
            ToMaster::BootError(text) => format!("boot-error {}\n", text.replace('\n', " ")),
        }
    }

    fn decode(line: &str) -> Option<ToMaster> {
        match line.split_once(' ') {
            None if line == "ready" => Some(ToMaster::Ready),
            None if line == "recycle" => Some(ToMaster::Recycle),
            Some(("boot-error", text)) => Some(ToMaster::BootError(text.to_owned())),
            Some(("refused", slot)) => slot.parse().ok().map(ToMaster::Refused),
            _ => None,
        }
    }
}

/// As the logs say it: what the message asks or tells.
impl std::fmt::Display for ToMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToMaster::Ready => f.write_str("ready"),
            ToMaster::Recycle => f.write_str("please replace me (--max-requests)"),
            ToMaster::Refused(slot) => write!(f, "cannot take slot {slot}'s socket"),
            ToMaster::BootError(text) => write!(f, "cannot boot: {text}"),
        }
    }
}

/// An order from the master to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToWorker {
    /// Accept on this slot's socket too (the socket comes with the message).
    Adopt(usize),
    /// Stop accepting on this slot's socket: it has its own worker again.
    Release(usize),
}

/// As the logs say it.
impl std::fmt::Display for ToWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToWorker::Adopt(slot) => write!(f, "accept on slot {slot}'s socket too"),
            ToWorker::Release(slot) => write!(f, "release slot {slot}'s socket"),
        }
    }
}

impl ToWorker {
    fn encode(self) -> String {
        match self {
            ToWorker::Adopt(slot) => format!("adopt {slot}\n"),
            ToWorker::Release(slot) => format!("release {slot}\n"),
        }
    }

    fn decode(record: &[u8]) -> Option<ToWorker> {
        let text = std::str::from_utf8(record).ok()?.strip_suffix('\n')?;
        let (verb, slot) = text.split_once(' ')?;
        let slot = slot.parse().ok()?;
        match verb {
            "adopt" => Some(ToWorker::Adopt(slot)),
            "release" => Some(ToWorker::Release(slot)),
            _ => None,
        }
    }
}

/// Worker side: receives one order and the fd that came with it, without
/// blocking (`WouldBlock` when there is none). `Ok(None)` means EOF: the master
/// is gone. Unknown records are skipped. An order whose fd could not be
/// received (the kernel truncates the message when this process is at its file
/// limit) comes without it: the caller refuses it; the channel is fine.
pub fn receive_order(channel: BorrowedFd<'_>) -> io::Result<Option<(ToWorker, Option<OwnedFd>)>> {
    loop {
        let mut record = [0u8; 64];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut record)];
        let message = recvmsg::<()>(
            channel.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        if message.bytes == 0 {
            return Ok(None);
        }
        let mut fd = None;
        let truncated = message.flags.contains(MsgFlags::MSG_CTRUNC);
        // With MSG_CTRUNC nix refuses to walk the control messages; what did not
        // fit was closed by the kernel, and what did is walked below otherwise.
        let cmsgs = if truncated { None } else { Some(message.cmsgs()?) };
        for cmsg in cmsgs.into_iter().flatten() {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel has just installed `raw` in this process's fd
                    // table for this message; nothing else refers to it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        let bytes = message.bytes;
        if let Some(order) = ToWorker::decode(&record[..bytes]) {
            return Ok(Some((order, fd)));
        }
    }
}

/// Worker side: sends one message (a blocking write of a few bytes).
pub fn send(channel: &mut UnixStream, message: &ToMaster) -> io::Result<()> {
    channel.write_all(message.encode().as_bytes())
}

/// Master side: the channel to one worker, non-blocking, with its partial line.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    pending: Vec<u8>,
}

/// What reading a link produced.
#[derive(Debug, Default)]
pub struct Received {
    pub messages: Vec<ToMaster>,
    /// The worker's end is closed (it exited, or is exiting).
    pub closed: bool,
}

impl Channel {
    pub fn new(stream: UnixStream) -> io::Result<Channel> {
        stream.set_nonblocking(true)?;
        Ok(Channel {
            stream,
            pending: Vec::new(),
        })
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends `order` to the worker, with `fd` attached if given. The record is
    /// tiny and the worker reads continuously, so a full buffer means the worker is
    /// stuck or gone: an error the caller logs.
    pub fn send(&self, order: ToWorker, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let text = order.encode();
        let raw = fd.map(|fd| [fd.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage<'_>> = raw.iter().map(|fds| ControlMessage::ScmRights(fds)).collect();
        sendmsg::<()>(
            self.stream.as_raw_fd(),
            &[IoSlice::new(text.as_bytes())],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }

    /// Reads everything available now, without blocking.
    pub fn receive(&mut self) -> Received {
        let mut received = Received::default();
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    received.closed = true;
                    break;
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    received.closed = true;
                    break;
                }
            }
        }
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            received.messages.extend(ToMaster::decode(&text));
        }
        received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_carry_their_fd_and_eof_is_none() {
        use std::os::fd::AsFd;
        let (master, worker) = pair().unwrap();
        let link = Channel::new(master).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        link.send(ToWorker::Release(2), None).unwrap();
        link.send(ToWorker::Adopt(1), Some(listener.as_fd())).unwrap();
        let (order, fd) = receive_order(worker.as_fd()).unwrap().unwrap();
        assert_eq!((order, fd.is_none()), (ToWorker::Release(2), true));
        let (order, fd) = receive_order(worker.as_fd()).unwrap().unwrap();
        assert_eq!(order, ToWorker::Adopt(1));
        let adopted = std::net::TcpListener::from(fd.expect("the socket came along"));
        assert_eq!(adopted.local_addr().unwrap(), listener.local_addr().unwrap());
        drop(link);
        assert!(receive_order(worker.as_fd()).unwrap().is_none());
    }

    #[test]
    fn messages_cross_the_channel_and_eof_is_seen() {
        let (master, mut worker) = pair().unwrap();
        let mut link = Channel::new(master).unwrap();
        send(&mut worker, &ToMaster::Ready).unwrap();
        send(&mut worker, &ToMaster::BootError("cannot open\ndatabase".into())).unwrap();
        let received = link.receive();
        assert_eq!(
            received.messages,
            [ToMaster::Ready, ToMaster::BootError("cannot open database".into())]
        );
        assert!(!received.closed);
        drop(worker);
        assert!(link.receive().closed);
    }
}
