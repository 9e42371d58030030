//! What tells a worker to stop: its own signals (the worker column of the signal
//! table) and EOF on the channel from the master.

use std::io;
use std::os::unix::net::UnixStream;

use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// How a worker stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// TERM, INT, or the master is gone: stop accepting, drain, exit 0.
    Graceful,
    /// QUIT: exit now.
    Fast,
}

pub struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
    quit: Signal,
    /// `None` once EOF was seen (or the channel could not be watched).
    master: Option<tokio::net::UnixStream>,
}

impl StopSignals {
    /// Registers TERM, INT and QUIT with tokio. Must run inside the runtime, while
    /// signals are still blocked, so none is lost before the handlers exist.
    pub fn install() -> io::Result<StopSignals> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            master: None,
        })
    }

    /// Also stop (gracefully) when the master's end of `channel` closes.
    pub fn watch_master(&mut self, channel: UnixStream) -> io::Result<()> {
        channel.set_nonblocking(true)?;
        self.master = Some(tokio::net::UnixStream::from_std(channel)?);
        Ok(())
    }

    /// Waits for the next reason to stop. Cancel-safe: used in `select!` loops.
    pub async fn next(&mut self) -> (Stop, &'static str) {
        tokio::select! {
            _ = self.terminate.recv() => (Stop::Graceful, "SIGTERM"),
            _ = self.interrupt.recv() => (Stop::Graceful, "SIGINT"),
            _ = self.quit.recv() => (Stop::Fast, "SIGQUIT"),
            () = master_gone(&mut self.master) => {
                self.master = None;
                (Stop::Graceful, "the master is gone")
            }
        }
    }
}

/// Resolves when the channel reaches EOF (or fails); never if there is none.
async fn master_gone(master: &mut Option<tokio::net::UnixStream>) {
    let Some(stream) = master else {
        return std::future::pending().await;
    };
    let mut buf = [0u8; 64];
    // The master sends nothing yet; bytes would be commands in a later version.
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}
