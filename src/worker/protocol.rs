//! Which HTTP a connection speaks: HTTP/2 with prior knowledge (h2c: the client
//! opens with the connection preface) or HTTP/1.1, on the same port. The worker
//! reads the first bytes itself and hands them to hyper with the rest; nothing
//! is read twice and no system call is added.

use std::future::poll_fn;
use std::io;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks, and the bytes read to tell.
pub enum Protocol {
    Http1(Bytes),
    Http2(Bytes),
}

/// Reads until the first bytes decide the protocol. `Ok(None)`: the client
/// closed first, or `closed()` said to give up (the sweep's header read
/// timeout: a client that connects and sends nothing). `closed` is asked on
/// every wake-up, and `park` is given the waker so the sweep can wake this.
pub async fn detect(
    stream: &TcpStream,
    closed: impl Fn() -> bool,
    park: impl Fn(&std::task::Waker),
) -> io::Result<Option<Protocol>> {
    // Small: only the first bytes decide; what does not fit stays in the socket
    // for hyper, and this buffer is freed once hyper has taken its bytes.
    let mut read = BytesMut::with_capacity(1024);
    loop {
        let ready = poll_fn(|cx| {
            if closed() {
                return Poll::Ready(Ok(false));
            }
            park(cx.waker());
            stream.poll_read_ready(cx).map_ok(|()| true)
        });
        if !ready.await? {
            return Ok(None);
        }
        match stream.try_read_buf(&mut read) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
        let seen = read.len().min(PREFACE.len());
        if read[..seen] != PREFACE[..seen] {
            return Ok(Some(Protocol::Http1(read.freeze())));
        }
        if seen == PREFACE.len() {
            return Ok(Some(Protocol::Http2(read.freeze())));
        }
        // A prefix of the preface so far ("PRI * HT..."): wait for the rest.
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
        detect(&server, || false, |_| {}).await.unwrap()
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
