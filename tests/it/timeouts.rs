//! The timeout model: the header read timeout bounds waiting for a request head
//! and keep-alive idleness; the body read timeout bounds a stalled request body;
//! the send timeout bounds a response nobody reads. A response in flight is
//! never idle.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::h2raw;
use crate::util::*;

/// Reads until the server closes the connection (EOF or reset), or `within`
/// passes; returns the bytes read and whether it was closed.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, true),
            Err(e) => panic!("read: {e}"),
        }
    }
    (got, false)
}

/// 20 MiB read at 1 MB/s: some 20 s, ten times the header read timeout.
#[test]
fn a_slow_reader_gets_the_whole_response_past_the_header_read_timeout() {
    const MIB: usize = 20;
    const RATE: f64 = 1_000_000.0; // bytes a second
    let server = Server::start_example(&["--workers", "1", "--header-read-timeout", "2s"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send_request(&mut stream, "GET", &format!("/bytes?kb={}", MIB << 10), false).unwrap();
    let started = Instant::now();
    let mut got = Vec::with_capacity((MIB << 20) + 1024);
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("after {} bytes: {e}", got.len()),
        }
        // The client's pace: no faster than RATE.
        let due = Duration::from_secs_f64(got.len() as f64 / RATE);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    assert!(started.elapsed() > Duration::from_secs(15), "the read was slow");
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    let body = &got[body_at..];
    assert_eq!(body.len(), MIB << 20, "the whole body arrived");
    assert!(
        body.iter().enumerate().all(|(i, byte)| *byte == b'a' + (i % 26) as u8),
        "in order"
    );
}

#[test]
fn a_stream_runs_past_the_header_read_timeout_to_its_end() {
    let server = Server::start_example(&["--workers", "1", "--header-read-timeout", "1s"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    send_request(&mut stream, "GET", "/stream?n=4&ms=700", false).unwrap();
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got);
    assert!(closed, "the stream ended");
    for n in 1..=4 {
        assert!(text.contains(&format!("data: {n}\n")), "event {n} missing:\n{text}");
    }
}

#[test]
fn a_stalled_request_body_is_closed_at_the_body_read_timeout_and_a_slow_one_is_not() {
    let server = Server::start_example(&["--workers", "1", "--body-read-timeout", "1s"]);
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled
        .write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 9\r\n\r\nab")
        .unwrap();
    let started = Instant::now();

    // A body that trickles in, a byte every 300 ms, is never idle for a second.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 8\r\n\r\n")
        .unwrap();
    for byte in b"trickled" {
        std::thread::sleep(Duration::from_millis(300)); // the client's pace
        slow.write_all(&[*byte]).unwrap();
    }
    let (got, closed) = read_until_closed(&mut slow, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(
        closed && text.starts_with("HTTP/1.1 200") && text.ends_with("trickled"),
        "{text}"
    );

    let (got, closed) = read_until_closed(&mut stalled, Duration::from_secs(10));
    assert!(closed, "the stalled body's connection is closed");
    assert!(got.is_empty(), "without an answer: {:?}", String::from_utf8_lossy(&got));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
}

#[test]
fn a_client_that_stops_reading_is_closed_at_the_send_timeout() {
    let server = Server::start_example(&["--workers", "1", "--send-timeout", "1s", "--admin", "127.0.0.1:0"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    send_request(&mut stream, "GET", "/bytes?kb=65536", false).unwrap();
    // Read nothing: 64 MiB cannot fit in the socket buffers, so the worker's
    // writes wait, then time out.
    eventually(Duration::from_secs(10), "the worker closes the connection", || {
        let status = get(server.admin_addr(), "/status").ok()?;
        (status.body.contains("\"connections\":0")).then_some(())
    });
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
    assert!(closed, "the client sees the connection end");
    assert!(got.len() < 64 << 20, "the response was cut: {} bytes", got.len());
}

/// A connection opened ahead of need (a browser's preconnect, a pool) and used
/// seconds later is answered: before its first request only the header read
/// timeout (30 s by default) closes it. HTTP/1.1 and HTTP/2 alike, four clients
/// at once.
#[test]
fn a_connection_silent_before_its_first_request_is_answered() {
    let server = Server::start(&["--workers", "1"]);
    let clients: Vec<_> = [(1_500, false), (10_000, false), (1_500, true), (10_000, true)]
        .into_iter()
        .map(|(ms, h2)| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                std::thread::sleep(Duration::from_millis(ms)); // the client's silence, under test
                let answer = match h2 {
                    false => {
                        stream
                            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                            .unwrap();
                        let (got, _) = read_until_closed(&mut stream, Duration::from_secs(5));
                        String::from_utf8_lossy(&got).into_owned()
                    }
                    true => {
                        let mut h2 = h2raw::RawH2::from_stream(stream);
                        let mut first = h2raw::PREFACE.to_vec();
                        first.extend(h2raw::frame(h2raw::SETTINGS, 0, 0, &[]));
                        first.extend(h2raw::request(1, "/"));
                        h2.send(&first).unwrap();
                        let frames = h2.read_until(Duration::from_secs(5), |f| {
                            f.kind == h2raw::DATA && f.flags & h2raw::END_STREAM != 0
                        });
                        let status = frames.iter().find(|f| f.kind == h2raw::HEADERS);
                        // `:status: 200` is entry 8 of HPACK's static table.
                        let ok = status.is_some_and(|f| f.payload.first() == Some(&0x88));
                        let body: Vec<u8> = frames
                            .iter()
                            .filter(|f| f.kind == h2raw::DATA)
                            .flat_map(|f| f.payload.clone())
                            .collect();
                        format!("h2 200={ok} {}", String::from_utf8_lossy(&body))
                    }
                };
                (ms, h2, answer)
            })
        })
        .collect();
    for client in clients {
        let (ms, h2, answer) = client.join().unwrap();
        let ok = match h2 {
            false => answer.starts_with("HTTP/1.1 200") && answer.contains("Hello from worker"),
            true => answer.starts_with("h2 200=true Hello from worker"),
        };
        assert!(ok, "silent for {ms} ms (HTTP/2: {h2}), then answered: {answer:?}");
    }
}
