//! One connection's life, and the bookkeeping the drain needs: how many
//! connections are open, whether each has a request in flight.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::scoreboard::Record;
use crate::service::WorkerService;
use std::sync::atomic::Ordering::Relaxed;

/// While draining, a keep-alive connection with no request in flight is closed
/// once it has been idle this long. A client that sends its next request within
/// it gets an answer with `Connection: close` instead of a reset.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// What every response of this worker looks at: has the drain started (then it
/// carries `Connection: close`), and has the worker served its request quota.
/// Read on every response, so `Cell`s.
pub struct Lifecycle {
    draining: Cell<bool>,
    drain_started: Notify,
    served: Cell<u64>,
    /// Requests after which the worker asks to be replaced; 0: never.
    quota: u64,
    quota_reached: Notify,
    /// Where the master (and later the status views) see the count.
    record: &'static Record,
}

impl Lifecycle {
    pub fn new(quota: u64, record: &'static Record) -> Lifecycle {
        Lifecycle {
            draining: Cell::new(false),
            drain_started: Notify::new(),
            served: Cell::new(0),
            quota,
            quota_reached: Notify::new(),
            record,
        }
    }

    pub fn start_drain(&self) {
        self.draining.set(true);
        self.drain_started.notify_waiters();
    }

    async fn drain_started(&self) {
        let notified = self.drain_started.notified();
        tokio::pin!(notified);
        // Register before checking the flag, so a start in between is not missed.
        notified.as_mut().enable();
        if !self.draining.get() {
            notified.await;
        }
    }

    pub fn served(&self) -> u64 {
        self.served.get()
    }

    /// Resolves once, when the quota is reached; never without a quota.
    pub async fn quota_reached(&self) {
        if self.quota == 0 {
            return std::future::pending().await;
        }
        self.quota_reached.notified().await;
    }

    fn served_one(&self) {
        let served = self.served.get() + 1;
        self.served.set(served);
        // A plain store: only this worker writes its record.
        self.record.requests.store(served, Relaxed);
        if served == self.quota {
            self.quota_reached.notify_one(); // kept as a permit if nobody waits yet
        }
    }
}

/// Counts open connections; lets the drain wait for the last one.
pub struct Connections {
    open: Cell<usize>,
    closed: Notify,
    record: &'static Record,
}

/// Held by a connection's task; dropping it counts the connection as closed.
pub struct Open(Rc<Connections>);

impl Connections {
    pub fn new(record: &'static Record) -> Connections {
        Connections {
            open: Cell::new(0),
            closed: Notify::new(),
            record,
        }
    }

    pub fn open(self: &Rc<Self>) -> Open {
        self.set(self.open.get() + 1);
        Open(Rc::clone(self))
    }

    fn set(&self, open: usize) {
        self.open.set(open);
        self.record.connections.store(open as u64, Relaxed);
    }

    pub fn count(&self) -> usize {
        self.open.get()
    }

    pub async fn all_closed(&self) {
        while self.open.get() > 0 {
            self.closed.notified().await;
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let open = self.0.open.get() - 1;
        self.0.set(open);
        if open == 0 {
            self.0.closed.notify_waiters();
        }
    }
}

/// Per connection: requests in flight, and since when it has been idle.
struct Activity {
    in_flight: Cell<u32>,
    /// Only kept up to date once the drain has started (it costs a clock read).
    idle_since: Cell<Instant>,
}

/// Serves one connection until the client closes it, or until the drain closes it.
pub async fn serve_connection<S: WorkerService>(
    stream: TcpStream,
    service: S,
    builder: &http1::Builder,
    lifecycle: &Rc<Lifecycle>,
) {
    let activity = Rc::new(Activity {
        in_flight: Cell::new(0),
        idle_since: Cell::new(Instant::now()),
    });
    let tracked = Tracked {
        inner: service,
        activity: Rc::clone(&activity),
        lifecycle: Rc::clone(lifecycle),
    };
    let conn = builder.serve_connection(TokioIo::new(stream), tracked);
    tokio::pin!(conn);
    // Errors are the client's doing (reset, malformed request, header timeout):
    // hyper has already answered what it could, and there is nobody to tell.
    tokio::select! {
        _ = conn.as_mut() => return,
        () = lifecycle.drain_started() => {}
    }
    activity.idle_since.set(Instant::now());
    loop {
        let now = Instant::now();
        let idle_until = activity.idle_since.get() + IDLE_GRACE;
        if activity.in_flight.get() == 0 && now >= idle_until {
            break;
        }
        // In flight: its response carries `Connection: close`, so hyper closes the
        // connection after it; check again one grace later in any case.
        let wake = if activity.in_flight.get() == 0 {
            idle_until
        } else {
            now + IDLE_GRACE
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep_until(wake) => {}
        }
    }
    // Idle: hyper closes an idle connection at once, or finishes a request whose
    // head is arriving right now and closes after it.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// The user's service, counting requests in flight and adding `Connection: close`
/// to every response produced once the drain has started.
struct Tracked<S> {
    inner: S,
    activity: Rc<Activity>,
    lifecycle: Rc<Lifecycle>,
}

impl<S: WorkerService> Service<Request<Incoming>> for Tracked<S> {
    type Response = Response<S::Body>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.activity.in_flight.set(self.activity.in_flight.get() + 1);
        TrackedFuture {
            inner: self.inner.call(request),
            activity: Rc::clone(&self.activity),
            lifecycle: Rc::clone(&self.lifecycle),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Tracked`], without a box per request.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        activity: Rc<Activity>,
        lifecycle: Rc<Lifecycle>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        let activity = this.activity;
        activity.in_flight.set(activity.in_flight.get() - 1);
        this.lifecycle.served_one();
        if this.lifecycle.draining.get() {
            activity.idle_since.set(Instant::now());
            if let Ok(response) = &mut result {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        Poll::Ready(result)
    }
}
