//! HTTP/2 responses the sweep can reset.
//!
//! A response on HTTP/2 can stall without any write blocking: a client that
//! gives the stream (or the connection) no flow-control window leaves hyper
//! holding the response's next bytes, waiting for capacity, and never writing
//! them. The send timeout, which watches the socket's writes, would never see
//! it. So each open stream's response notes since when hyper has held a piece
//! of it without coming back for the next (see `respond::TrackedBody`), and
//! the sweep resets a stream that has waited like that for longer than the send
//! timeout while no `DATA` frame left the connection either (as nginx's
//! `send_timeout` resets it). Resetting is dropping the stream's task: h2 then
//! sends `RST_STREAM` (`CANCEL`) and frees what it buffered for the stream.
//!
//! The task is found through the executor: hyper calls the service for a new
//! stream and, right after, gives the executor that stream's task. The call,
//! once the service has returned, leaves the stream's place here in
//! [`CALLED`], and [`LocalExec`] takes it with the task's abort handle.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;

use slab::Slab;
use tokio::task::AbortHandle;

/// The open streams of one HTTP/2 connection whose requests are in flight.
#[derive(Default)]
pub struct Streams(RefCell<Slab<Stream>>);

struct Stream {
    /// Since when hyper has held a piece of the response without asking for
    /// the next (`None`: it has not, or the service is producing it).
    held_since: Option<u32>,
    /// The stream's task, once the executor has it.
    task: Option<AbortHandle>,
}

thread_local! {
    /// The stream whose service was just called, for the executor to give its task.
    static CALLED: Cell<Option<(Rc<Streams>, u32)>> = const { Cell::new(None) };
}

impl Streams {
    /// A request arrived on a new stream: its place, until [`Streams::close`].
    /// (At most `--h2-max-concurrent-streams` per connection, and `u32::MAX`
    /// is no key: a `u32` holds them.)
    pub fn open(&self) -> u32 {
        let key = self.0.borrow_mut().insert(Stream {
            held_since: None,
            task: None,
        });
        u32::try_from(key).unwrap_or(u32::MAX - 1)
    }

    /// The service was called for stream `key`: the executor's next task is its.
    pub fn called(self: &Rc<Self>, key: u32) {
        CALLED.set(Some((Rc::clone(self), key)));
    }

    /// The stream's response is done (or dropped).
    pub fn close(&self, key: u32) {
        self.0.borrow_mut().try_remove(key as usize);
    }

    /// Hyper holds a piece of the response since `since`, or (`None`) it came back for more.
    pub fn held(&self, key: u32, since: Option<u32>) {
        if let Some(stream) = self.0.borrow_mut().get_mut(key as usize) {
            stream.held_since = since;
        }
    }

    /// Resets every stream whose response hyper has held for more than
    /// `limit` ticks (as of `now`), while the connection wrote no `DATA` frame
    /// since `data_sent`. Returns how many. (Progress is the connection's: a
    /// stream the client trickles window to keeps the others too, at most
    /// `--h2-max-concurrent-streams` of them, each holding one piece of its
    /// response. Which stream a `DATA` frame is for is on the wire, but which
    /// stream a response is for, hyper does not say.)
    pub fn reset_stalled(&self, now: u32, data_sent: u32, limit: u32) -> usize {
        let waited = |since: u32| now.wrapping_sub(since);
        if waited(data_sent) <= limit {
            return 0; // the connection makes progress: its streams share it
        }
        let mut reset = 0;
        for (_, stream) in self.0.borrow_mut().iter_mut() {
            if stream.held_since.is_some_and(|since| waited(since) > limit) {
                if let Some(task) = stream.task.take() {
                    task.abort();
                    reset += 1;
                }
            }
        }
        reset
    }
}

/// Runs HTTP/2 streams as tasks of the worker's own thread (services need not
/// be `Send`), and keeps each stream's abort handle for the sweep.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        let task = tokio::task::spawn_local(future);
        if let Some((streams, key)) = CALLED.take() {
            if let Some(stream) = streams.0.borrow_mut().get_mut(key as usize) {
                stream.task = Some(task.abort_handle());
            }
        }
    }
}
