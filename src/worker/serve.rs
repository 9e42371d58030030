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

use std::io;
use std::rc::Rc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::conn::{self, Connections, Lifecycle};
use super::control::{Control, Event, Stop};
use crate::config::Config;
use crate::ipc::Message;
use crate::scoreboard::{Record, State};
use crate::service::WorkerService;

/// After a failed accept (EMFILE, ENOBUFS...), wait this long before the next:
/// retrying at once would spin, since the connection is still queued.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What every accept loop and connection of this worker shares.
struct Shared<S> {
    service: S,
    builder: http1::Builder,
    lifecycle: Rc<Lifecycle>,
    connections: Rc<Connections>,
    name: String,
}

/// Serves `service` on `listener` (and adopted sockets) until `control` says
/// stop, then drains.
pub async fn serve<S: WorkerService>(
    listener: TcpListener,
    service: S,
    mut control: Control,
    config: &Config,
    record: &'static Record,
    name: &str,
) {
    let mut builder = http1::Builder::new();
    // Without a timer hyper silently ignores the header read timeout.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    builder.max_buf_size(64 * 1024);
    let shared = Rc::new(Shared {
        service,
        builder,
        lifecycle: Rc::new(Lifecycle::new(quota(config), record)),
        connections: Rc::new(Connections::new(record)),
        name: name.to_owned(),
    });

    let own = tokio::task::spawn_local(accept_loop(listener, Rc::clone(&shared)));
    // The master reads the beat to find a runtime that is stuck (--timeout); it
    // keeps beating through the drain, which has its own deadline.
    let beat = (config.timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    tokio::task::spawn_local(async move {
        loop {
            record.beat();
            tokio::time::sleep(beat).await;
        }
    });
    let mut adopted: Vec<(usize, JoinHandle<()>)> = Vec::new();
    let (how, why) = loop {
        let event = tokio::select! {
            event = control.next() => event,
            () = shared.lifecycle.quota_reached() => {
                let served = shared.lifecycle.served();
                info!("{name}: served {served} requests (--max-requests): asking to be replaced");
                control.tell_master(&Message::Recycle);
                continue;
            }
        };
        match event {
            Event::Stop(how, why) => break (how, why),
            Event::Adopt(slot, listener) => {
                debug!("{name}: also accepting on slot {slot}'s socket until it has a ready worker");
                adopted.push((
                    slot,
                    tokio::task::spawn_local(accept_loop(listener, Rc::clone(&shared))),
                ));
            }
            Event::Release(slot) => {
                for (_, task) in adopted.iter().filter(|(adopted, _)| *adopted == slot) {
                    task.abort();
                }
                adopted.retain(|(adopted, _)| *adopted != slot);
                debug!("{name}: released slot {slot}'s socket");
            }
        }
    };
    // Stop accepting: an aborted loop drops its fd; the master's copies keep the queues.
    own.abort();
    adopted.iter().for_each(|(_, task)| task.abort());
    if how == Stop::Fast {
        return info!("{name}: {why}: exiting now");
    }
    let connections = &shared.connections;
    info!("{name}: {why}: draining {} connections", connections.count());
    shared.lifecycle.start_drain();
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
            event = control.next() => if let Event::Stop(Stop::Fast, why) = event {
                return info!("{name}: {why} while draining: exiting now");
            },
        }
    }
}

async fn accept_loop<S: WorkerService>(listener: TcpListener, shared: Rc<Shared<S>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                let open = shared.connections.open();
                let shared = Rc::clone(&shared);
                tokio::task::spawn_local(async move {
                    conn::serve_connection(stream, shared.service.clone(), &shared.builder, &shared.lifecycle).await;
                    drop(open);
                });
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
