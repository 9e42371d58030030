//! Real apps under the server: axum (routes, JSON, server-sent events, a
//! WebSocket echo), served as they are.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tungstenite::Message;

use crate::util::*;

fn axum_app(args: &[&str]) -> Server {
    Server::start_command(command(example("axum_app"), args))
}

#[test]
fn the_readme_axum_router_is_served_as_it_is() {
    let server = Server::start_command(command(example("axum_minimal"), &["--workers", "2"]));
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    let hello = get(server.addr, "/").unwrap();
    assert_eq!(hello.status, 200);
    assert!(workers.contains(&hello.worker_pid().expect("a pid")), "{}", hello.body);
}

#[test]
fn an_axum_app_with_connect_info_is_served_as_it_is() {
    let server = axum_app(&["--workers", "2"]);
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    let hello = get(server.addr, "/").unwrap();
    assert_eq!(hello.status, 200);
    assert!(workers.contains(&hello.worker_pid().expect("a pid")), "{}", hello.body);
    let json = get(server.addr, "/json").unwrap();
    let value: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    let pid = value["pid"].as_i64().expect("a pid in the JSON");
    assert!(workers.iter().any(|w| i64::from(w.as_raw()) == pid), "{value}");

    // `ConnectInfo<SocketAddr>`: the client's address, as the client sees its own.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let me = stream.local_addr().unwrap();
    send_request(&mut stream, "GET", "/ip", false).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with(&format!("\r\n\r\n{me}\n")),
        "{answer}"
    );

    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\nhello"),
        "{answer}"
    );
}

#[test]
fn a_five_second_event_stream_outlives_the_header_read_timeout() {
    let server = axum_app(&["--workers", "1", "--header-read-timeout", "1s"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    send_request(&mut stream, "GET", "/sse?n=6&ms=1000", false).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("the stream ends by itself");
    let text = String::from_utf8_lossy(&got);
    assert!(started.elapsed() >= Duration::from_secs(4), "{text}");
    for n in 1..=6 {
        assert!(text.contains(&format!("data: {n}\n")), "event {n} missing:\n{text}");
    }
}

type WebSocket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn websocket(server: &Server) -> WebSocket {
    websocket_at(server, "/ws")
}

fn websocket_at(server: &Server, path: &str) -> WebSocket {
    let (socket, response) = tungstenite::connect(format!("ws://{}{path}", server.addr)).expect("the handshake");
    assert_eq!(response.status(), 101);
    socket
}

fn echo(socket: &mut WebSocket, text: &str) -> String {
    socket.send(Message::text(text)).expect("send");
    loop {
        match socket.read().expect("read the echo") {
            Message::Text(echoed) => return echoed.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("not an echo: {other:?}"),
        }
    }
}

#[test]
fn a_websocket_echoes_and_counts_as_an_open_connection() {
    let server = axum_app(&[
        "--workers",
        "1",
        "--admin",
        "127.0.0.1:0",
        "--header-read-timeout",
        "1s",
    ]);
    let mut socket = websocket(&server);
    assert_eq!(echo(&mut socket, "hello"), "hello");
    // Quiet for longer than the header read timeout: an upgraded connection is
    // the service's, not idle keep-alive.
    std::thread::sleep(Duration::from_millis(1600)); // the client's pace, not a wait
    assert_eq!(echo(&mut socket, "still there"), "still there");
    let status = get(server.admin_addr(), "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    let open: u64 = status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .sum();
    assert!(open >= 1, "the WebSocket is counted: {status:#}");
    socket.close(None).unwrap();
}

/// An upgraded connection whose handler does not listen for the drain is the
/// handler's: it runs until `--graceful-timeout`.
#[test]
fn a_websocket_runs_through_the_drain_until_the_graceful_timeout() {
    let mut server = axum_app(&["--workers", "1", "--graceful-timeout", "2s"]);
    let mut socket = websocket_at(&server, "/ws?on_drain=stay");
    assert_eq!(echo(&mut socket, "before"), "before");
    let stopped = Instant::now();
    server.signal(Signal::SIGTERM);
    server.wait_for_log("draining 1 connections", Duration::from_secs(5));
    assert_eq!(echo(&mut socket, "during the drain"), "during the drain");
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert!(
        stopped.elapsed() >= Duration::from_millis(1900),
        "kept until the graceful timeout"
    );
    let ended = match socket.read() {
        Err(_) | Ok(Message::Close(_)) => true,
        Ok(other) => panic!("after the stop: {other:?}"),
    };
    assert!(ended, "the WebSocket was closed when the worker exited");
}

/// `prefork_server::draining()` in a WebSocket handler: on a HUP, the client
/// of the worker being replaced gets a close frame with code 1001 (going
/// away) within a second, and can reconnect to the new worker at once.
#[test]
fn a_websocket_hears_going_away_within_a_second_of_a_reload() {
    let server = axum_app(&["--workers", "1"]);
    let mut socket = websocket(&server);
    assert_eq!(echo(&mut socket, "before"), "before");
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    server.signal(Signal::SIGHUP);
    server.wait_for_log("replaced: draining", Duration::from_secs(10));
    let drained = Instant::now();
    let frame = loop {
        match socket.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("not a close frame: {other:?}"),
        }
    };
    assert!(
        drained.elapsed() < Duration::from_secs(1),
        "after {:?}",
        drained.elapsed()
    );
    let frame = frame.expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
    let mut again = websocket(&server);
    assert_eq!(echo(&mut again, "after"), "after");
}

/// `prefork_server::draining()` in an event stream: on TERM the stream ends
/// cleanly (the chunked body's last chunk) and the worker exits at once,
/// long before `--graceful-timeout`.
#[test]
fn an_event_stream_ends_cleanly_when_its_worker_stops() {
    let mut server = axum_app(&["--workers", "1"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send_request(&mut stream, "GET", "/sse?n=1000&ms=100", false).unwrap();
    let mut first = [0u8; 512];
    let n = stream.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).contains("200 OK"));
    let stopped = Instant::now();
    server.signal(Signal::SIGTERM);
    let mut rest = first[..n].to_vec();
    stream.read_to_end(&mut rest).expect("the stream ends by itself");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.ends_with("\r\n0\r\n\r\n"), "no last chunk: {text:?}");
    assert!(server.wait_exit(Duration::from_secs(5)).success());
    assert!(stopped.elapsed() < Duration::from_secs(5), "{:?}", stopped.elapsed());
}
