//! Which HTTP a connection speaks: HTTP/2 with prior knowledge (h2c: the client
//! opens with the connection preface) or HTTP/1.1, on the same port. The worker
//! reads the first bytes itself and hands them to hyper with the rest; nothing
//! is read twice and no system call is added.

use std::io;

use bytes::BytesMut;
use hyper::server::conn::{http1, http2};
use tokio::net::TcpStream;

use super::io::readable;
use super::streams::LocalExec;
use crate::config::Config;

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks, and the bytes read to tell. (Kept as they were
/// read: frozen into `Bytes`, a part-filled buffer would take a second
/// allocation for its shared header, on every new connection.)
pub enum Protocol {
    Http1(BytesMut),
    Http2(BytesMut),
}

/// Reads until the first bytes decide the protocol. `None`: the client closed
/// or reset first, or `closed()` said to give up (the sweep's header read
/// timeout: a client that connects and sends nothing); see [`readable`].
pub async fn detect(
    stream: &TcpStream,
    closed: impl Fn() -> bool,
    keep_waker: impl Fn(&std::task::Waker),
) -> Option<Protocol> {
    // Small: only the first bytes decide; what does not fit stays in the socket
    // for hyper, and this buffer is freed once hyper has taken its bytes.
    let mut read = BytesMut::with_capacity(1024);
    loop {
        if !readable(stream, &closed, &keep_waker).await {
            return None;
        }
        match stream.try_read_buf(&mut read) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
        let seen = read.len().min(PREFACE.len());
        if read[..seen] != PREFACE[..seen] {
            return Some(Protocol::Http1(read));
        }
        if seen == PREFACE.len() {
            return Some(Protocol::Http2(read));
        }
        // A prefix of the preface so far ("PRI * HT..."): wait for the rest.
    }
}

/// The HTTP/1.1 and HTTP/2 connection settings of this worker, and its TLS.
pub struct Protocols {
    pub h1: http1::Builder,
    pub h2: http2::Builder<LocalExec>,
    /// `--tls-cert`: every new connection starts with a handshake.
    pub tls: Option<super::tls::Tls>,
    /// `--plain-redirect`: the TLS port the plain port's requests are sent to.
    pub redirect_to: Option<u16>,
}

impl Protocols {
    pub fn new(config: &Config, tls: Option<super::tls::Tls>, redirect_to: Option<u16>) -> Protocols {
        let mut h1 = http1::Builder::new();
        // No hyper timer: the housekeeping sweep enforces the header read
        // timeout for every connection at once, instead of a timer per request.
        // No writev: hyper copies the head and body into one buffer (64 KiB at a
        // time for a large body) and makes one write(2); for the small responses
        // that dominate, that costs fewer instructions than a queue of buffers
        // (docs/performance.md has the figures).
        // Half-close: hyper does not read the socket while a request is in flight
        // except for its body, so a read waiting then is a body read, which the
        // body read timeout bounds. (Without it hyper reads to notice a client that
        // went away; the sweep does that instead, with a peek, see `connections`: a
        // client that closes, or half-closes, mid-request is taken as gone, as
        // hyper does.)
        h1.header_read_timeout(None)
            .half_close(true)
            .keep_alive(true)
            .max_buf_size(64 * 1024)
            .writev(false);
        let mut h2 = http2::Builder::new(LocalExec);
        h2.max_concurrent_streams(config.h2_max_concurrent_streams)
            .max_header_list_size(config.h2_max_header_list_size);
        Protocols {
            h1,
            h2,
            tls,
            redirect_to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn detected(sent: &[&[u8]]) -> Option<Protocol> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        for piece in sent {
            std::io::Write::write_all(&mut client, piece).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(client);
        detect(&server, || false, |_| {}).await
    }

    #[test]
    fn the_preface_means_http2_and_anything_else_http1() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let split = [&PREFACE[..7], &PREFACE[7..]];
            assert!(matches!(detected(&split).await, Some(Protocol::Http2(bytes)) if bytes == PREFACE));
            let get = b"GET / HTTP/1.1\r\n";
            assert!(matches!(detected(&[get]).await, Some(Protocol::Http1(bytes)) if &bytes[..] == get));
            assert!(matches!(detected(&[b"PRIX"]).await, Some(Protocol::Http1(_))));
            assert!(detected(&[b"PRI"]).await.is_none(), "closed before it was clear");
        });
    }
}
