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
//! Most streams never have a task: the executor ([`LocalExec`]) polls each
//! new stream once in its connection's task, and a stream whose answer was
//! ready then has ended. The others become tasks, and the sweep needs their
//! abort handles: hyper calls the service for a new stream and, right after,
//! gives the executor that stream's future. The call, once the service has
//! returned, leaves the stream's place here in [`CALLED`]; the executor keeps
//! it with the future, and [`Streams::run_ready`] gives the place the task's
//! abort handle if the stream becomes one.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use slab::Slab;
use tokio::task::AbortHandle;

use crate::log::error;

/// The open streams of one HTTP/2 connection whose requests are in flight.
#[derive(Default)]
pub struct Streams {
    slots: RefCell<Slab<Stream>>,
    /// The streams hyper handed over during the connection's poll, for
    /// [`Streams::run_ready`], in the order they came.
    handed_over: RefCell<Vec<HandedOver>>,
}

struct Stream {
    /// Since when hyper has held a piece of the response without asking for
    /// the next (`None`: it has not, or the service is producing it).
    held_since: Option<u32>,
    /// The stream's task, if its first poll left it not done.
    task: Option<AbortHandle>,
}

thread_local! {
    /// The stream whose service was just called, for the executor to keep with its future.
    static CALLED: Cell<Option<(Rc<Streams>, u32)>> = const { Cell::new(None) };
}

impl Streams {
    /// A request arrived on a new stream: its place, until [`Streams::close`].
    /// (At most `--h2-max-concurrent-streams` per connection, and `u32::MAX`
    /// is no key: a `u32` holds them.)
    pub fn open(&self) -> u32 {
        let key = self.slots.borrow_mut().insert(Stream {
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
        self.slots.borrow_mut().try_remove(key as usize);
    }

    /// Hyper holds a piece of the response since `since`, or (`None`) it came back for more.
    pub fn held(&self, key: u32, since: Option<u32>) {
        if let Some(stream) = self.slots.borrow_mut().get_mut(key as usize) {
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
        for (_, stream) in self.slots.borrow_mut().iter_mut() {
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

/// Runs HTTP/2 streams on the worker's own thread (services need not be
/// `Send`), and keeps each stream's abort handle for the sweep.
///
/// A stream is not made a task at once: hyper hands it over while it polls
/// the connection, and it waits in its connection's [`Streams`] until that
/// poll is done ([`Streams::run_ready`]), when it is polled once in the
/// connection's task. Most answers are ready at once (a handler that needs no
/// I/O, a `Full` body within the stream's window): such a stream then queues
/// its response and ends there, without a task's allocation, scheduling and
/// wake-ups (about 4% of an h2c request's instructions), and the connection,
/// woken by h2 for the frames queued, writes the responses of every stream of
/// that read in one `write(2)`, as it did when each stream was a task.
/// (Polled inside hyper's poll instead, each stream's response was flushed
/// alone, a write per stream.) A stream that is not done becomes a task, whose
/// first poll comes at once and registers the task's waker where the first
/// poll left a no-op one: a future that returned `Pending` checks again what
/// it waits for each time it is polled, so nothing it waited on is missed in
/// between.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F: Future<Output = ()> + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        match CALLED.take() {
            Some((streams, key)) => streams.handed_over.borrow_mut().push((key, Box::pin(future))),
            // Not a stream of a connection the worker tracks: a task at once.
            None => drop(tokio::task::spawn_local(future)),
        }
    }
}

/// A stream hyper handed over, not yet polled.
type HandedOver = (u32, Pin<Box<dyn Future<Output = ()>>>);

/// The most streams' room [`Streams::run_ready`] keeps between polls (24
/// bytes each: an idle connection keeps at most this).
const KEPT_CAPACITY: usize = 32;

impl Streams {
    /// Polls once each stream hyper handed over during the connection's poll
    /// that just ended; those not done become tasks.
    ///
    /// A panic in a stream's code must cost that stream alone, as it would in
    /// a task of its own (tokio catches it there), not the connection whose
    /// task this is: the service's `poll` is caught further in (`respond`),
    /// and what is not (hyper's calls of the body's `is_end_stream` and
    /// `size_hint`, the drops of the service's future and body) is caught
    /// here around the poll and the drop; the stream is then dropped, which
    /// resets it.
    pub fn run_ready(&self) {
        // Taken out first: a stream's poll must not find the list borrowed.
        let mut batch = std::mem::take(&mut *self.handed_over.borrow_mut());
        for (key, mut future) in batch.drain(..) {
            let polled = catch_unwind(AssertUnwindSafe(|| {
                NOOP.with(|waker| future.as_mut().poll(&mut Context::from_waker(waker)))
            }));
            match polled {
                // Answered: the stream's place is freed as its future is dropped.
                Ok(Poll::Ready(())) => drop_caught(future),
                Ok(Poll::Pending) => {
                    let task = tokio::task::spawn_local(future);
                    if let Some(stream) = self.slots.borrow_mut().get_mut(key as usize) {
                        stream.task = Some(task.abort_handle());
                    }
                }
                Err(panic) => {
                    error!(
                        "an HTTP/2 stream panicked outside its request handler: {}; the stream is reset",
                        super::panic_message(panic.as_ref())
                    );
                    drop_caught(future);
                }
            }
        }
        // Streams are handed over only inside hyper's poll of the connection,
        // never by a stream's own poll.
        let mut handed_over = self.handed_over.borrow_mut();
        debug_assert!(
            handed_over.is_empty(),
            "a stream was handed over while streams were polled"
        );
        if handed_over.is_empty() && batch.capacity() <= KEPT_CAPACITY {
            *handed_over = batch; // its allocation, for the next poll
        }
    }

    /// Makes tasks of the streams hyper handed over and nobody polled: the
    /// connection ends without its poll having returned (a panic in hyper's
    /// poll, or in a service's `call` there). Each holds the connection's
    /// entry, which holds this list: as tasks, they end (their connection is
    /// gone), free the entry and leave the in-flight count. Nothing of the
    /// user's runs here: this may be during a panic's unwind.
    pub fn spawn_handed_over(&self) {
        let batch = std::mem::take(&mut *self.handed_over.borrow_mut());
        for (_, future) in batch {
            drop(tokio::task::spawn_local(future));
        }
    }
}

/// Drops a stream's future, catching a panic in its drop (the user's code:
/// the service's future, the body) so that it costs this stream alone.
fn drop_caught(future: Pin<Box<dyn Future<Output = ()>>>) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(future))) {
        error!(
            "an HTTP/2 stream panicked as it was dropped: {}",
            super::panic_message(panic.as_ref())
        );
    }
}

/// The waker of a stream's first poll: nothing to wake, since a stream not
/// done then is spawned and polled again at once. (`Waker::noop` would do,
/// but needs Rust 1.85, above the crate's `rust-version`.)
struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

thread_local! {
    static NOOP: Waker = Waker::from(Arc::new(Noop));
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::cell::Cell;

    /// Runs `test` on a current-thread runtime inside a `LocalSet`, as the worker does.
    fn on_worker_thread(test: impl Future<Output = ()>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        tokio::task::LocalSet::new().block_on(&runtime, test);
    }

    /// Yields until `done`, for at most 10 s.
    async fn until(done: impl Fn() -> bool, what: &str) {
        let waiting = async {
            while !done() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .unwrap_or_else(|_| panic!("{what}"));
    }

    /// A stream as `respond` opens it: its place, then the executor is told of it.
    fn hand_over(streams: &Rc<Streams>, future: impl Future<Output = ()> + 'static) -> u32 {
        let key = streams.open();
        streams.called(key);
        LocalExec.execute(future);
        key
    }

    #[test]
    fn a_stream_waits_for_the_connections_poll_to_end_and_a_ready_one_ends_there_without_a_task() {
        on_worker_thread(async {
            let streams = Rc::new(Streams::default());
            let answered = Rc::new(Cell::new(false));
            let flag = Rc::clone(&answered);
            let key = hand_over(&streams, async move { flag.set(true) });
            assert!(!answered.get(), "polled while hyper was still polling the connection");
            streams.run_ready();
            assert!(answered.get(), "not polled by run_ready");
            assert!(streams.handed_over.borrow().is_empty());
            let slots = streams.slots.borrow();
            assert!(
                slots.get(key as usize).is_some_and(|stream| stream.task.is_none()),
                "a task was made"
            );
        });
    }

    #[test]
    fn a_stream_that_panics_outside_its_handler_costs_itself_alone() {
        on_worker_thread(async {
            let streams = Rc::new(Streams::default());
            let answered = Rc::new(Cell::new(false));
            let flag = Rc::clone(&answered);
            hand_over(&streams, async { panic!("as a body's size_hint might") });
            hand_over(&streams, async move { flag.set(true) });
            streams.run_ready();
            assert!(answered.get(), "the stream after the panicking one was not served");
            assert!(streams.handed_over.borrow().is_empty());
        });
    }

    #[test]
    fn streams_nobody_polled_become_tasks_when_their_connection_ends() {
        on_worker_thread(async {
            let streams = Rc::new(Streams::default());
            let (send, receive) = tokio::sync::oneshot::channel::<()>();
            hand_over(&streams, async move {
                let _ = send.send(());
            });
            streams.spawn_handed_over();
            assert!(streams.handed_over.borrow().is_empty());
            let ran = tokio::time::timeout(std::time::Duration::from_secs(10), receive).await;
            assert!(matches!(ran, Ok(Ok(()))), "the stream left over was never run");
        });
    }

    #[test]
    fn a_stream_not_done_becomes_a_task_that_its_own_waker_wakes_and_the_sweep_can_abort() {
        on_worker_thread(async {
            let streams = Rc::new(Streams::default());
            let (send, receive) = tokio::sync::oneshot::channel::<()>();
            let (waiting, answered) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
            let (waits, answers) = (Rc::clone(&waiting), Rc::clone(&answered));
            let woken = hand_over(&streams, async move {
                tokio::task::yield_now().await; // so that its task polls it too
                waits.set(true);
                let _ = receive.await;
                answers.set(true);
            });
            let (_keep, never) = tokio::sync::oneshot::channel::<()>();
            let stalled = hand_over(&streams, async move {
                let _ = never.await;
            });
            streams.run_ready();
            assert!(!answered.get());
            let task = |key: u32| streams.slots.borrow()[key as usize].task.clone();
            let (woken_task, stalled_task) = (task(woken).expect("a task"), task(stalled).expect("a task"));
            // Sent only once the task waits: the sender must wake the task's
            // own waker, not the first poll's no-op one.
            until(|| waiting.get(), "the stream's task never polled it").await;
            tokio::task::yield_now().await;
            assert!(!woken_task.is_finished() && !answered.get());
            send.send(()).expect("the stream waits");
            until(|| woken_task.is_finished(), "the stream's task was never woken").await;
            assert!(answered.get());
            // The sweep's reset reaches the other through its handle.
            streams.held(stalled, Some(0));
            assert_eq!(streams.reset_stalled(100, 0, 10), 1);
            until(
                || stalled_task.is_finished(),
                "the stalled stream's task was not aborted",
            )
            .await;
        });
    }
}
