//! The channel between the master and one worker: a Unix socket pair made before
//! the fork.
//!
//! - Worker → master: one line per message (`ready`, `boot-error <text>`), so the
//!   master knows when a worker serves and why one could not start.
//! - Master → worker: nothing yet; EOF tells the worker that the master is gone
//!   (no orphans, even where `PR_SET_PDEATHSIG` does not fire).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

/// A message from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Runtime built, handlers installed, the service made: accepting now.
    Ready,
    /// Could not start; the text says why. The worker exits with code 3 next.
    BootError(String),
}

impl Message {
    fn encode(&self) -> String {
        match self {
            Message::Ready => "ready\n".into(),
            // One line per message: a multi-line error is folded.
            Message::BootError(text) => format!("boot-error {}\n", text.replace('\n', " ")),
        }
    }

    fn decode(line: &str) -> Option<Message> {
        match line.split_once(' ') {
            None if line == "ready" => Some(Message::Ready),
            Some(("boot-error", text)) => Some(Message::BootError(text.to_owned())),
            _ => None,
        }
    }
}

/// Worker side: sends one message (a blocking write of a few bytes).
pub fn send(channel: &mut UnixStream, message: &Message) -> io::Result<()> {
    channel.write_all(message.encode().as_bytes())
}

/// Master side: the channel to one worker, non-blocking, with its partial line.
#[derive(Debug)]
pub struct Link {
    stream: UnixStream,
    pending: Vec<u8>,
}

/// What reading a link produced.
#[derive(Debug, Default)]
pub struct Received {
    pub messages: Vec<Message>,
    /// The worker's end is closed (it exited, or is exiting).
    pub closed: bool,
}

impl Link {
    pub fn new(stream: UnixStream) -> io::Result<Link> {
        stream.set_nonblocking(true)?;
        Ok(Link {
            stream,
            pending: Vec::new(),
        })
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
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
            received.messages.extend(Message::decode(&text));
        }
        received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_the_channel_and_eof_is_seen() {
        let (master, mut worker) = UnixStream::pair().unwrap();
        let mut link = Link::new(master).unwrap();
        send(&mut worker, &Message::Ready).unwrap();
        send(
            &mut worker,
            &Message::BootError("cannot open\ndatabase".into()),
        )
        .unwrap();
        let received = link.receive();
        assert_eq!(
            received.messages,
            [
                Message::Ready,
                Message::BootError("cannot open database".into())
            ]
        );
        assert!(!received.closed);
        drop(worker);
        assert!(link.receive().closed);
    }
}
