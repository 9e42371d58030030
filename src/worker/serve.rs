//! The accept loop and the drain.
//!
//! Drain (TERM, INT, or the master gone): stop accepting (the slot's socket stays
//! open in the master, so what is queued waits for the next worker instead of being
//! reset), let in-flight requests finish, answer the next request on each
//! keep-alive connection with `Connection: close`, close connections idle past a
//! short grace, and give up at `--graceful-timeout`.

use std::io;
use std::rc::Rc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::conn::{self, Connections, Drain};
use super::stop::{Stop, StopSignals};
use super::BoxError;
use crate::config::Config;

/// After a failed accept (EMFILE, ENOBUFS...), wait this long before the next:
/// retrying at once would spin, since the connection is still queued.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `service` on `listener` until `stop` says so, then drains.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    mut stop: StopSignals,
    config: &Config,
    name: &str,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + 'static,
    S::Future: 'static,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = http1::Builder::new();
    // Without a timer hyper silently ignores the header read timeout.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    builder.max_buf_size(64 * 1024);
    let builder = Rc::new(builder);
    let drain = Rc::new(Drain::default());
    let connections = Rc::new(Connections::default());

    let (how, why) = loop {
        tokio::select! {
            biased;
            reason = stop.next() => break reason,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let guard = connections.open();
                    let service = service.clone();
                    let (builder, drain) = (Rc::clone(&builder), Rc::clone(&drain));
                    tokio::task::spawn_local(async move {
                        conn::serve_connection(stream, service, &builder, &drain).await;
                        drop(guard);
                    });
                }
                Err(err) if is_transient(&err) => {}
                Err(err) => {
                    warn!("{name}: accept failed: {err}; retrying in {}ms", ACCEPT_BACKOFF.as_millis());
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    };
    drop(listener); // stop accepting; the master's copy keeps the queue alive
    if how == Stop::Fast {
        info!("{name}: {why}: exiting now");
        return;
    }
    info!(
        "{name}: {why}: draining {} connections",
        connections.count()
    );
    drain.start();
    let deadline = tokio::time::sleep(config.graceful_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = connections.all_closed() => return info!("{name}: drained; exiting"),
            () = &mut deadline => {
                let open = connections.count();
                return warn!("{name}: {open} connections still open at the graceful timeout; exiting");
            }
            (how, why) = stop.next() => if how == Stop::Fast {
                return info!("{name}: {why} while draining: exiting now");
            }, // another TERM/INT changes nothing: already draining
        }
    }
}

/// Errors about one connection that failed before we accepted it.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
