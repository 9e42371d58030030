//! What the worker itself answers around the service: bad `Host` fields, a
//! panicking handler, and request bodies the service leaves unread.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util::*;

/// Sends `raw` on a fresh connection and reads until the server closes it (or
/// 3 s pass): the status codes of every response, in order.
fn statuses(addr: std::net::SocketAddr, raw: &[u8]) -> Vec<u16> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(raw).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got); // a reset after the last answer is fine
    let text = String::from_utf8_lossy(&got);
    text.match_indices("HTTP/1.")
        .filter_map(|(at, _)| text[at + 9..].get(..3)?.parse().ok())
        .collect()
}

#[test]
fn a_request_without_one_valid_host_gets_400() {
    let server = Server::start(&["--workers", "1"]);
    let cases: [(&[u8], u16); 6] = [
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n", 200),
    ];
    for (raw, expected) in cases {
        assert_eq!(
            statuses(server.addr, raw),
            [expected],
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn a_panicking_handler_gets_500_and_the_worker_serves_on() {
    let server = Server::start_example(&["--workers", "1"]);
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    let response = get(server.addr, "/panic").unwrap();
    assert_eq!(response.status, 500);
    assert_eq!(response.header("connection"), Some("close"));
    server.wait_for_log(
        "a request handler panicked: GET /panic; answering 500",
        Duration::from_secs(5),
    );
    let after = get(server.addr, "/").unwrap();
    assert_eq!(after.worker_pid(), Some(worker), "the same worker serves on");
}

#[test]
fn an_unread_body_is_discarded_up_to_1_mib_and_the_connection_kept() {
    let server = Server::start(&["--workers", "1"]);
    let post = |size: usize| {
        let mut raw = format!("POST / HTTP/1.1\r\nHost: test\r\nContent-Length: {size}\r\n\r\n").into_bytes();
        raw.resize(raw.len() + size, b'x');
        raw.extend_from_slice(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        raw
    };
    assert_eq!(statuses(server.addr, &post(1 << 20)), [405, 200], "1 MiB is discarded");
    assert_eq!(
        statuses(server.addr, &post(3 << 20)),
        [405],
        "3 MiB closes the connection"
    );
}

#[test]
fn a_service_made_per_connection_knows_both_addresses() {
    use std::io::Read;
    let server = Server::start_example(&["--workers", "1"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let me = stream.local_addr().unwrap();
    send_request(&mut stream, "GET", "/addr", false).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.ends_with(&format!("\r\n\r\nclient {me} local {}\n", server.addr)),
        "{answer}"
    );
}

/// `prefork_server::local_addr()`: with `--port 0`, the app learns the port
/// the kernel picked, in its setup and in every handler.
#[test]
fn the_app_knows_the_port_that_port_0_picked() {
    let server = Server::start_example(&["--workers", "2"]);
    assert_ne!(server.addr.port(), 0);
    let expected = format!("Some({})", server.addr);
    for _ in 0..4 {
        assert_eq!(get(server.addr, "/local-addr").unwrap().body.trim(), expected);
    }
    server.wait_for_log_count(&format!("the setup sees {expected}"), 2, Duration::from_secs(5));
}

/// `--max-body-size`: a request whose Content-Length is over it gets 413 and
/// `Connection: close`, and never reaches the service; a smaller one does.
#[test]
fn a_declared_body_over_max_body_size_gets_413_without_reaching_the_service() {
    let server = Server::start_example(&["--workers", "1", "--max-body-size", "1KiB"]);
    // The head alone: the answer comes before any of the body is sent.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 2048\r\n\r\n")
        .unwrap();
    let response = read_response(&mut stream).expect("an answer to the head");
    assert_eq!(response.status, 413);
    assert_eq!(response.header("connection"), Some("close"));
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 512\r\n\r\n{}",
        "x".repeat(512)
    );
    stream.write_all(request.as_bytes()).unwrap();
    let response = read_response(&mut stream).unwrap();
    assert_eq!(response.status, 200, "under the limit: served");
    assert_eq!(response.body.len(), 512, "echoed by the service");
}

/// A chunked body has no length to check up front: it is counted as the
/// service reads it, and once past `--max-body-size` the service gets an error
/// instead of the rest, and the client gets 413 (not the service's 400) and a
/// closed connection. A smaller one is served.
/// A handler that panics on the body's error gets the client 413 too.
#[test]
fn a_chunked_body_over_max_body_size_gets_413_as_it_streams() {
    let server = Server::start_example(&["--workers", "1", "--max-body-size", "4KiB"]);
    let chunked = |path: &str, chunks: usize| {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        for _ in 0..chunks {
            let chunk = format!("400\r\n{}\r\n", "y".repeat(1024));
            if stream.write_all(chunk.as_bytes()).is_err() {
                break; // refused and closed while still sending
            }
            std::thread::sleep(Duration::from_millis(20)); // the client's pace
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        read_response(&mut stream)
    };
    let big = chunked("/echo", 16).expect("an answer before the connection closes");
    assert_eq!(big.status, 413, "16 KiB chunked over a 4 KiB limit");
    assert_eq!(big.header("connection"), Some("close"));
    let panicked = chunked("/echo-or-panic", 16).expect("an answer before the connection closes");
    assert_eq!(panicked.status, 413, "a handler that panicked on the limit's error");
    server.wait_for_log("panicked on a body over --max-body-size", Duration::from_secs(5));
    let small = chunked("/echo", 2).unwrap();
    assert_eq!(small.status, 200, "2 KiB chunked: served");
    assert_eq!(small.body.len(), 2048, "and echoed by the service");
}
