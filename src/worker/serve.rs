//! The accept loops and the drain.
//!
//! A worker accepts on its slot's socket, and on any sibling slot's socket the
//! master hands it while that slot has no ready worker.
//!
//! Drain (TERM, INT, or the master gone): stop accepting (the sockets stay open in
//! the master, so what is queued waits for the next worker instead of being reset),
//! let in-flight requests finish, answer the next request on each keep-alive
//! connection with `Connection: close`, close connections idle past a short grace,
//! and give up at `--graceful-timeout`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use crate::log::{debug, info, warn};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::access::AccessLog;
use super::conn::{self, Ended, Start};
use super::connections::{Asked, Connections, Limits, Open};
use super::control::{Control, Event, Stop};
use super::io::{Counted, Stream};
use super::lifecycle::Lifecycle;
use super::park::{Idle, Parking};
use super::protocol::Protocols;
use crate::config::Config;
use crate::service::{Made, WorkerApp};
use crate::sys::channel::ToMaster;
use crate::sys::scoreboard::{Record, State};
use crate::sys::steering::SlotLoad;

/// After a failed accept (EMFILE, ENOBUFS...), wait this long before the next:
/// retrying at once would spin, since the connection is still queued.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The housekeeping period: heartbeats, and the precision of the idle limits.
pub(super) const TICK: Duration = Duration::from_millis(250);

/// While draining, a keep-alive connection with no request in flight is closed
/// once it has been idle this long. A client that sends its next request within
/// it gets an answer with `Connection: close` instead of a reset.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// An HTTP/1.1 keep-alive connection idle this long is parked (see `park`)
/// until its next request: idle connections (clients that keep a pool open)
/// then cost little. A client busier than this never pays for the new task and
/// hyper connection its next request needs.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Where this worker says how it is doing: its scoreboard record, and
/// (`--balance steered`) its slot's load for the kernel's program.
#[derive(Clone, Copy)]
pub struct Reports {
    pub record: &'static Record,
    pub steer: Option<&'static SlotLoad>,
}

/// What a worker serves with beside its service, made at its boot.
pub struct Extras {
    pub access_log: Option<AccessLog>,
    pub tls: Option<super::tls::Tls>,
    /// `--plain-port`: plain HTTP beside the TLS port.
    pub plain: Option<TcpListener>,
}

/// What every accept loop and connection of this worker shares.
struct Shared<S: WorkerApp> {
    service: S,
    protocols: Protocols,
    lifecycle: Rc<Lifecycle>,
    connections: Rc<Connections>,
    /// `None` if its epoll instance could not be made: nothing is parked then.
    parking: Option<Parking<S::Service>>,
    name: String,
    /// `--balance steered`: this slot's load, for the kernel's program.
    steer: Option<&'static SlotLoad>,
}

/// Serves `service` on `listener` (and adopted sockets) until `control` says
/// stop, then drains: the worker's three phases, set up, serve, drain.
pub async fn serve<S: WorkerApp>(
    listener: TcpListener,
    service: S,
    control: Control,
    config: &Config,
    reports: Reports,
    extras: Extras,
    name: &str,
) {
    let Extras { access_log, tls, plain } = extras;
    // `--plain-redirect`: to this worker's TLS port (the real one, with port 0).
    let redirect_to = (config.plain_redirect)
        .then(|| listener.local_addr().ok().map(|addr| addr.port()))
        .flatten();
    let Reports { record, steer } = reports;
    let lifecycle = Lifecycle::new(
        quota(config),
        record,
        steer,
        access_log,
        config.max_body_size,
        config.slow_request,
    );
    let shared = Rc::new(Shared {
        service,
        protocols: Protocols::new(config, tls, redirect_to),
        lifecycle: Rc::new(lifecycle),
        connections: Rc::new(Connections::new(record, steer, config.max_connections)),
        parking: Parking::new()
            .inspect_err(|err| warn!("{name}: cannot watch parked connections: {err}; idle ones keep their buffers"))
            .ok(),
        name: name.to_owned(),
        steer,
    });
    if let Some(steer) = steer {
        steer.start();
    }
    let plain = plain.map(Rc::new);
    let stopped = serve_until_stopped(Rc::new(listener), plain, control, &shared, config, record).await;
    match stopped.how {
        Stop::Fast => info!("{name}: {}: exiting now", stopped.why),
        Stop::Graceful => drain(&shared, stopped, config, record).await,
    }
}

/// How serving ended: the stop asked for, why, and the sockets to drain.
struct Stopped {
    how: Stop,
    why: &'static str,
    control: Control,
    /// The slot's socket, then those adopted, then the plain port's; no longer accepted on.
    listeners: Vec<(Rc<TcpListener>, Port)>,
}

/// Accepts and serves, with the housekeeping, the parking and the steering
/// running beside, until told to stop; then stops accepting.
async fn serve_until_stopped<S: WorkerApp>(
    listener: Rc<TcpListener>,
    plain: Option<Rc<TcpListener>>,
    control: Control,
    shared: &Rc<Shared<S>>,
    config: &Config,
    record: &'static Record,
) -> Stopped {
    let own = tokio::task::spawn_local(accept_loop(
        Rc::clone(&listener),
        Rc::clone(shared),
        shared.steer,
        Port::Main,
    ));
    let plain_task = (plain.as_ref())
        .map(|plain| tokio::task::spawn_local(accept_loop(Rc::clone(plain), Rc::clone(shared), None, Port::Plain)));
    let limits = Limits {
        idle: ticks(config.header_read_timeout),
        idle_close: Asked::Close,
        body: ticks(config.body_read_timeout),
        send: ticks(config.send_timeout),
        park: match shared.parking {
            Some(_) => ticks(PARK_AFTER),
            None => u32::MAX,
        },
    };
    tokio::task::spawn_local(unpark(Rc::clone(shared)));
    tokio::task::spawn_local(housekeeping(Rc::clone(shared), record, limits));
    // Steering runs in a task of its own, polled only when a signal or the master
    // wakes it; the future the runtime was given is polled on every scheduler
    // tick. (callgrind saw no difference per request: the signal streams are
    // cheap to poll. It stays a task because it reads better than one more
    // branch in this function.)
    let steering = tokio::task::spawn_local(steer(control, Rc::clone(shared)));
    let (how, why, control, adopted) = match steering.await {
        Ok(steered) => steered,
        Err(err) => match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => unreachable!("the steering task is never aborted"),
        },
    };
    own.abort();
    plain_task.inspect(JoinHandle::abort);
    adopted.iter().for_each(|(_, task, _)| task.abort());
    let listeners = std::iter::once((listener, Port::Main))
        .chain(adopted.into_iter().map(|(_, _, listener)| (listener, Port::Main)))
        .chain(plain.map(|plain| (plain, Port::Plain)))
        .collect();
    Stopped {
        how,
        why,
        control,
        listeners,
    }
}

/// The drain: what is queued is taken and served with `Connection: close`,
/// every connection is told, and the worker waits for them to close, until
/// `--graceful-timeout`.
async fn drain<S: WorkerApp>(shared: &Rc<Shared<S>>, stopped: Stopped, config: &Config, record: &'static Record) {
    let Stopped {
        why,
        mut control,
        listeners,
        ..
    } = stopped;
    let (name, connections) = (&shared.name, &shared.connections);
    shared.lifecycle.start_drain();
    // The app's handlers hear of it first: a WebSocket that says goodbye now
    // closes before the deadline.
    super::draining::begin();
    // Take what is already queued (it is served, with `Connection: close`), then
    // close this worker's copies of the sockets. On a stop the master has closed
    // its own, so the last close refuses new connections at once instead of
    // letting them wait in a queue nobody accepts from (a reload or an upgrade
    // keeps the master's, and a successor's, open).
    let mut queued = 0;
    for (listener, port) in listeners {
        queued += accept_queued(&listener, shared, port).await;
    }
    info!(
        "{name}: {why}: draining {} connections ({queued} taken from the queue)",
        connections.count()
    );
    connections.start_drain();
    if let Some(parking) = &shared.parking {
        parking.start_drain(shared.lifecycle.now());
    }
    record.set_state(State::Draining);
    let deadline = tokio::time::sleep(config.graceful_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = connections.all_closed() => return info!("{name}: drained; exiting"),
            () = &mut deadline => {
                let open = connections.count();
                return warn!("{name}: {open} connections still open at the graceful timeout; exiting");
            }
            // Another TERM/INT, or an adoption, changes nothing: already draining.
            event = control.next() => match event {
                Event::Stop(Stop::Fast, why) => return info!("{name}: {why} while draining: exiting now"),
                Event::Reopen => reopen_logs(shared),
                Event::Stop(Stop::Graceful, _) | Event::Adopt(..) | Event::Release(_) => {}
            },
        }
    }
}

/// Every tick: beat the heartbeat (the master reads it to find a runtime that is
/// stuck, `--timeout`; it goes on through the drain, which has its own deadline)
/// and close connections that have waited too long (see `conn`).
async fn housekeeping<S: WorkerApp>(shared: Rc<Shared<S>>, record: &'static Record, serving: Limits) {
    let draining = Limits {
        idle: ticks(IDLE_GRACE),
        idle_close: Asked::Drain,
        ..serving
    };
    let mut interval = tokio::time::interval(TICK);
    // After a stall (a blocking handler), one tick, not a burst of them.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut parked_last_tick = 0;
    // Whether a connection was open since the last trim, and how long ago that was.
    let mut served_since_trim = false;
    let mut ticks_since_trim = IDLE_TRIM_EVERY;
    loop {
        interval.tick().await;
        record.beat();
        if let Some(steer) = shared.steer.filter(|_| !shared.lifecycle.is_draining()) {
            steer.beat();
        }
        // And when the last connection has gone, at most once in
        // `IDLE_TRIM_EVERY`: what a load left in the allocator's caches is not
        // needed until the next one (and a trim on every 0-to-1 change of
        // sparse traffic would cost page faults for nothing).
        let idle = shared.connections.count() == 0;
        served_since_trim |= !idle;
        ticks_since_trim = ticks_since_trim.saturating_add(1);
        let gone_idle = idle && served_since_trim && ticks_since_trim >= IDLE_TRIM_EVERY;
        if parked_last_tick >= TRIM_AFTER_PARKING || gone_idle {
            give_freed_memory_back();
            served_since_trim = false;
            ticks_since_trim = 0;
        }
        let lifecycle = &shared.lifecycle;
        lifecycle.tick();
        let limits = if lifecycle.is_draining() { draining } else { serving };
        parked_last_tick = shared.connections.sweep(lifecycle.now(), limits);
        if let Some(access_log) = &lifecycle.access_log {
            access_log.flush();
        }
        if let Some(parking) = &shared.parking {
            parking.sweep(lifecycle.now(), limits.idle);
        }
    }
}

/// Parking this many connections in one tick frees enough (16 KiB each) to be
/// worth handing back to the kernel at the next one.
const TRIM_AFTER_PARKING: usize = 64;

/// The fewest ticks from a trim to the next one for the last connection gone (10 s).
const IDLE_TRIM_EVERY: u32 = 40;

/// Returns the free pages of the heap to the kernel, with the blocks the
/// worker's allocator keeps for reuse (see `alloc`). glibc's `free` returns
/// only the top of the heap; the buffers of parked connections are holes in the
/// middle of it, which would stay resident (reusable by this worker, but counted
/// against it) until the next burst of connections.
fn give_freed_memory_back() {
    // The worker's own cache of small blocks first: they are holes too.
    crate::Allocator::release_kept_blocks();
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whole ticks in `duration`, rounded up (see `Connections::sweep`).
fn ticks(duration: Duration) -> u32 {
    let ticks = duration.as_nanos().div_ceil(TICK.as_nanos());
    u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// Follows signals and the master's commands until told to stop: adopts and
/// releases sibling sockets, and asks to be replaced at the request quota.
async fn steer<S: WorkerApp>(mut control: Control, shared: Rc<Shared<S>>) -> (Stop, &'static str, Control, Adopted) {
    let name = &shared.name;
    let mut adopted: Adopted = Vec::new();
    loop {
        let event = tokio::select! {
            event = control.next() => event,
            () = shared.lifecycle.quota_reached() => {
                let served = shared.lifecycle.served();
                info!("{name}: served {served} requests (--max-requests): asking to be replaced");
                control.tell_master(&ToMaster::Recycle);
                continue;
            }
        };
        match event {
            Event::Stop(how, why) => return (how, why, control, adopted),
            Event::Reopen => reopen_logs(&shared),
            Event::Adopt(slot, listener) => {
                debug!("{name}: also accepting on slot {slot}'s socket until it has a ready worker");
                let listener = Rc::new(listener);
                let task =
                    tokio::task::spawn_local(accept_loop(Rc::clone(&listener), Rc::clone(&shared), None, Port::Main));
                adopted.push((slot, task, listener));
            }
            Event::Release(slot) => {
                for (_, task, _) in adopted.iter().filter(|(adopted, ..)| *adopted == slot) {
                    task.abort();
                }
                adopted.retain(|(adopted, ..)| *adopted != slot);
                debug!("{name}: released slot {slot}'s socket");
            }
        }
    }
}

/// Sibling slots' sockets this worker accepts on: the slot, its accept loop, the socket.
type Adopted = Vec<(usize, JoinHandle<()>, Rc<TcpListener>)>;

/// Accepts on `listener` until aborted. `steer`: the slot's load, on the
/// slot's own socket (the program counts what it steered there; what is taken
/// from the queue is counted here, and an empty queue resets the difference).
async fn accept_loop<S: WorkerApp>(
    listener: Rc<TcpListener>,
    shared: Rc<Shared<S>>,
    steer: Option<&'static SlotLoad>,
    port: Port,
) {
    loop {
        // At --max-connections, the next connections wait in the kernel's
        // queue of this socket until one of this worker's closes.
        shared.connections.below_limit().await;
        let accepted = std::future::poll_fn(|cx| {
            // Pending with budget left is the socket's: nothing queued. (Out
            // of tokio's cooperative budget, it is Pending whatever waits.)
            let Some(steer) = steer else {
                return listener.poll_accept(cx);
            };
            let budget = tokio::task::coop::has_budget_remaining();
            let polled = listener.poll_accept(cx);
            if budget && polled.is_pending() {
                steer.queue_empty();
            }
            polled
        });
        match accepted.await {
            Ok((stream, client)) => {
                if let Some(steer) = steer {
                    steer.took_one();
                }
                start_connection(stream, client, &shared, port)
            }
            Err(err) if is_transient(&err) => {}
            Err(err) => {
                warn!(
                    "{}: accept failed: {err}; retrying in {}ms",
                    shared.name,
                    ACCEPT_BACKOFF.as_millis()
                );
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Which of the worker's ports a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// The serving port (TLS, with `--tls-cert`), the slot's or an adopted one.
    Main,
    /// `--plain-port`.
    Plain,
}

fn start_connection<S: WorkerApp>(
    stream: tokio::net::TcpStream,
    client: SocketAddr,
    shared: &Rc<Shared<S>>,
    port: Port,
) {
    let start = match port {
        Port::Main => Start::New,
        Port::Plain => Start::NewPlain,
    };
    if let Some(waited_ms) = crate::sys::listener::waited_in_queue(stream.as_raw_fd()) {
        shared
            .lifecycle
            .traffic()
            .queue_wait
            .observe(crate::sys::traffic::ticks_from_us(u64::from(waited_ms) * 1000));
    }
    let open = shared
        .connections
        .enter(&shared.lifecycle, stream.as_raw_fd(), client, start.state());
    let counted = shared.connections.count_one();
    let made = shared.service.connection(&stream, client);
    let shared = Rc::clone(shared);
    // Boxed (see `spawn_connection`).
    spawn_connection(Box::pin(async move {
        let service = match made {
            Made::Ready(service) => service,
            Made::Later(making) => match making.await {
                Ok(service) => service,
                Err(err) => return warn!("{}: cannot make the service for {client}: {err}", shared.name),
            },
        };
        serve_until_parked(Stream::Plain(stream), service, open, counted, client, start, &shared).await;
    }));
}

/// Spawns a connection's task. Its future is boxed first: it is large (800
/// bytes), and a task holding it whole would take a block of more than 1 KiB,
/// above glibc's thread cache (its slow path costs about 500 instructions to
/// take and free), and would be copied whole five times (into the task, and
/// between the task's stages). Boxed, the future is copied once and both
/// blocks come from the thread cache.
fn spawn_connection(connection: Pin<Box<dyn Future<Output = ()>>>) {
    tokio::task::spawn_local(connection);
}

/// Serves a connection until it ends, or parks it once it has been idle long
/// enough (and serves it again from there when the client sends).
async fn serve_until_parked<S: WorkerApp>(
    stream: Stream,
    service: S::Service,
    open: Open,
    counted: Counted,
    client: SocketAddr,
    start: Start,
    shared: &Shared<S>,
) {
    let ended = conn::serve_connection(stream, service, &shared.protocols, open, counted, start).await;
    let (
        Ended::Idle {
            stream,
            service,
            counted,
            since,
        },
        Some(parking),
    ) = (ended, &shared.parking)
    else {
        return;
    };
    match parking.park(stream, service, counted, client, since) {
        Ok(()) => debug!("an idle keep-alive connection is parked: its buffers and task are freed"),
        Err(err) => debug!("{}: cannot park an idle connection: {err}; closing it", shared.name),
    }
}

/// Serves parked connections again as their clients send their next requests.
async fn unpark<S: WorkerApp>(shared: Rc<Shared<S>>) {
    let Some(parking) = &shared.parking else { return };
    loop {
        for Idle {
            stream,
            service,
            counted,
            client,
            ..
        } in parking.woken().await
        {
            let stream = match stream.resume() {
                Ok(stream) => stream,
                Err(err) => {
                    debug!(
                        "{}: cannot serve a parked connection again: {err}; closing it",
                        shared.name
                    );
                    continue;
                }
            };
            let open = shared.connections.enter(
                &shared.lifecycle,
                stream.tcp().as_raw_fd(),
                client,
                Start::Unparked.state(),
            );
            let shared = Rc::clone(&shared);
            spawn_connection(Box::pin(async move {
                serve_until_parked(stream, service, open, counted, client, Start::Unparked, &shared).await;
            }));
        }
    }
}

/// Accepts every connection queued on `listener` now, without waiting for more;
/// returns how many.
async fn accept_queued<S: WorkerApp>(listener: &TcpListener, shared: &Rc<Shared<S>>, port: Port) -> usize {
    let mut taken = 0;
    loop {
        let next = std::future::poll_fn(|cx| match listener.poll_accept(cx) {
            std::task::Poll::Pending => std::task::Poll::Ready(None),
            std::task::Poll::Ready(accepted) => std::task::Poll::Ready(Some(accepted)),
        });
        match next.await {
            Some(Ok((stream, client))) => {
                start_connection(stream, client, shared, port);
                taken += 1;
            }
            Some(Err(err)) if is_transient(&err) => {}
            Some(Err(_)) | None => return taken,
        }
    }
}

/// USR1: this worker's log file and access log are opened again.
fn reopen_logs<S: WorkerApp>(shared: &Shared<S>) {
    if let Err(err) = crate::sys::logfile::reopen() {
        warn!("{}: cannot reopen the log file: {err}", shared.name);
    }
    if let Some(access_log) = &shared.lifecycle.access_log {
        if let Err(err) = access_log.reopen() {
            return warn!(
                "{}: cannot reopen the access log: {err}; its lines go to the old file",
                shared.name
            );
        }
    }
    info!("{}: SIGUSR1: log files reopened", shared.name);
}

/// Errors about one connection that failed before we accepted it.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}

/// This worker's request quota: `--max-requests` plus a random share of
/// `--max-requests-jitter` (gunicorn's semantics), 0 for none. The randomness only
/// has to differ between workers: the hash of this worker's pid and the clock.
fn quota(config: &Config) -> u64 {
    if config.max_requests == 0 {
        return 0;
    }
    if config.max_requests_jitter == 0 {
        return config.max_requests;
    }
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let random = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos));
    config.max_requests + random % (config.max_requests_jitter + 1)
}
