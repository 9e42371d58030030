//! TLS in a worker: the rustls configuration, built after the fork from what
//! the master read and checked (`crate::tls`), and the handshake of each new
//! connection.
//!
//! The handshake is watched as a connection that has not sent its request
//! head yet (`State::Detecting`): the header read timeout counts from the
//! accept, so a client that sends its ClientHello a byte at a time is closed
//! when it runs out, whatever it has sent by then. A client that speaks plain
//! HTTP to the TLS port gets `400`, with nginx's words, instead of a handshake
//! that never ends; anything else that is not a TLS record is closed.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use rustls::server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use super::io::TlsConn;
use crate::sys::tickets::TicketKeys;
use crate::tls::{Loaded, Negotiated, SharedTickets, TlsInfo};

/// A TLS record's first byte: a handshake (RFC 8446 §5.1, `ContentType`).
const HANDSHAKE_RECORD: u8 = 0x16;

/// ALPN: HTTP/2 first, as browsers and gRPC ask for it.
const H2: &[u8] = b"h2";
const HTTP_1_1: &[u8] = b"http/1.1";

/// What a plain HTTP request on the TLS port is answered.
const PLAIN_HTTP: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 46\r\nconnection: close\r\n\r\nThe plain HTTP request was sent to HTTPS port\n";

/// How long a plain HTTP client has to take the 400 before the close: what it
/// sent is read and dropped meanwhile, so the close does not reset the
/// connection under the answer.
const PLAIN_HTTP_LINGER: Duration = Duration::from_secs(1);

/// The worker's TLS: its rustls configurations.
pub struct Tls {
    /// ALPN `h2` and `http/1.1`.
    offered: Arc<ServerConfig>,
    /// No ALPN: for a client that offers only protocols this server does not
    /// speak (`http/1.0`, say), which rustls would refuse with an alert; it
    /// gets HTTP/1.1, as nginx gives it.
    unoffered: Arc<ServerConfig>,
}

/// A session-ticket producer that produces none.
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

impl Tls {
    /// The configuration for `loaded`, with the tickets the master's keys seal.
    pub fn new(loaded: &Loaded, tickets: &'static TicketKeys) -> Result<Tls, String> {
        let builder = ServerConfig::builder_with_provider(Arc::clone(&loaded.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|err| format!("cannot set up TLS: {err}"))?;
        let builder = match &loaded.client {
            Some(verifier) => builder.with_client_cert_verifier(Arc::clone(verifier)),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&loaded.certificates) as _);
        match loaded.client {
            // Resumption works on every worker: the tickets' keys are the master's.
            None => config.ticketer = Arc::new(SharedTickets::new(tickets)),
            // With client certificates, none: a resumed session carries the
            // chain verified at its first handshake without verifying it again,
            // so a client whose certificate has expired since, or whose CA a
            // reload removed, would still be served.
            Some(_) => {
                config.ticketer = Arc::new(NoTickets);
                config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                config.send_tls13_tickets = 0;
            }
        }
        // No 0-RTT (its data can be replayed): rustls's default, said here.
        config.max_early_data_size = 0;
        let unoffered = Arc::new(config.clone());
        config.alpn_protocols = vec![H2.to_vec(), HTTP_1_1.to_vec()];
        Ok(Tls {
            offered: Arc::new(config),
            unoffered,
        })
    }

    /// The configuration for a client that offers `alpn`.
    fn for_offer<'a>(&self, alpn: Option<impl Iterator<Item = &'a [u8]>>) -> Arc<ServerConfig> {
        let ours = |protocol: &[u8]| protocol == H2 || protocol == HTTP_1_1;
        match alpn.map(|mut offered| offered.any(ours)) {
            Some(false) => Arc::clone(&self.unoffered),
            _ => Arc::clone(&self.offered),
        }
    }
}

/// The handshake of a new connection from `client`. `None`: it failed, the
/// client went away, spoke plain HTTP (answered), or `closed()` said to give
/// up (the sweep's header read timeout); the connection is closed.
pub async fn handshake(
    tls: &Tls,
    stream: TcpStream,
    client: std::net::SocketAddr,
    closed: impl Fn() -> bool,
    keep_waker: impl Fn(&Waker),
) -> Option<TlsConn> {
    let mut first = [0u8; 1];
    let peeked = watched(
        std::future::poll_fn(|cx| stream.poll_peek(cx, &mut ReadBuf::new(&mut first))),
        &closed,
        &keep_waker,
    )
    .await;
    match peeked {
        Ok(1) if first[0] == HANDSHAKE_RECORD => {}
        Ok(1) if first[0].is_ascii_uppercase() => {
            answer_plain_http(stream).await;
            return None;
        }
        _ => return None,
    }
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let accepted = match watched(hello, &closed, &keep_waker).await {
        Ok(start) => {
            let config = tls.for_offer(start.client_hello().alpn());
            watched(start.into_stream(config), &closed, &keep_waker).await
        }
        Err(err) => Err(err),
    };
    let stream = match accepted {
        Ok(stream) => stream,
        Err(err) => {
            failed(client, &err);
            return None;
        }
    };
    let conn = stream.get_ref().1;
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let negotiated = Negotiated {
        server_name: conn.server_name().map(str::to_owned),
        h2: alpn.as_deref() == Some(H2),
        alpn,
        version: conn.protocol_version(),
        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        client_certificates: conn.peer_certificates().map(<[_]>::to_vec),
    };
    Some(TlsConn {
        stream,
        info: TlsInfo {
            inner: Arc::new(negotiated),
        },
    })
}

/// `future`, given up (`TimedOut`) once `closed()` says so; `keep_waker` is
/// given the waker, so that whoever decides (the sweep) can wake this.
async fn watched<T>(
    future: impl Future<Output = io::Result<T>>,
    closed: impl Fn() -> bool,
    keep_waker: impl Fn(&Waker),
) -> io::Result<T> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        if closed() {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::TimedOut)));
        }
        keep_waker(cx.waker());
        future.as_mut().poll(cx)
    })
    .await
}

/// Logs a failed handshake: at `info` when the client's certificate was the
/// reason (an operator setting up client certificates needs to see why a
/// client is refused), at `debug` otherwise (scanners and clients that give up
/// fail handshakes all day).
fn failed(client: std::net::SocketAddr, err: &io::Error) {
    use rustls::Error as Tls;
    let reason = err.get_ref().and_then(|inner| inner.downcast_ref::<Tls>());
    match reason {
        Some(reason @ (Tls::InvalidCertificate(_) | Tls::NoCertificatesPresented)) => {
            crate::log::info!("{client}: TLS handshake refused: the client's certificate: {reason}");
        }
        _ => crate::log::debug!("{client}: TLS handshake failed: {err}"),
    }
}

/// `400`, then what the client sends is read and dropped until it closes, or
/// for [`PLAIN_HTTP_LINGER`] at most.
async fn answer_plain_http(mut stream: TcpStream) {
    if stream.write_all(PLAIN_HTTP).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(PLAIN_HTTP_LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
