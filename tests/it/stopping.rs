//! Graceful and fast stops: in-flight requests finish, everything exits, nothing
//! is left running.

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

#[test]
fn term_lets_an_in_flight_request_finish_then_everything_exits_zero() {
    let mut server = Server::start_example(&["--workers", "2", "--graceful-timeout", "10s"]);
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    let addr = server.addr;
    let slow = thread::spawn(move || get(addr, "/sleep?ms=1500"));
    server.wait_for_log("sleeping 1500ms", Duration::from_secs(10));
    server.signal(Signal::SIGTERM);
    let response = slow.join().unwrap().expect("the in-flight request completes");
    assert_eq!(response.status, 200);
    assert!(response.body.starts_with("slept 1500ms in worker"), "{}", response.body);
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "drain closes the connection after it"
    );
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert!(
        workers.iter().all(|pid| !alive(*pid)),
        "no process of the tree survives"
    );
    assert!(server.logs().contains("drained; exiting"));
}

#[test]
fn an_idle_keep_alive_connection_gets_connection_close_on_its_next_request() {
    let mut server = Server::start(&["--workers", "1"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    send_request(&mut stream, "GET", "/", true).unwrap();
    assert_eq!(read_response(&mut stream).unwrap().header("connection"), None);
    server.signal(Signal::SIGTERM);
    server.wait_for_log("draining 1 connections", Duration::from_secs(5));
    // Within the idle grace: answered, not reset, and told to go away.
    send_request(&mut stream, "GET", "/", true).unwrap();
    let response = read_response(&mut stream).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn the_worker_gives_up_at_the_graceful_timeout() {
    let mut server = Server::start_example(&["--workers", "1", "--graceful-timeout", "1s"]);
    let addr = server.addr;
    let slow = thread::spawn(move || get(addr, "/sleep?ms=20000"));
    server.wait_for_log("sleeping 20000ms", Duration::from_secs(10));
    let started = Instant::now();
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(5)).success());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(slow.join().unwrap().is_err(), "the request was cut at the deadline");
    assert!(server.logs().contains("still open at the graceful timeout"));
}

#[test]
fn quit_and_a_second_term_are_fast_stops() {
    for signals in [&[Signal::SIGQUIT][..], &[Signal::SIGTERM, Signal::SIGTERM]] {
        let mut server = Server::start_example(&["--workers", "1", "--graceful-timeout", "30s"]);
        let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
        let addr = server.addr;
        let slow = thread::spawn(move || get(addr, "/sleep?ms=20000"));
        server.wait_for_log("sleeping 20000ms", Duration::from_secs(10));
        for signal in signals {
            server.signal(*signal);
            if signals.len() > 1 {
                server.wait_for_log("draining", Duration::from_secs(5));
            }
        }
        assert!(server.wait_exit(Duration::from_secs(5)).success(), "{signals:?}");
        assert!(!alive(worker), "{signals:?}");
        assert!(slow.join().unwrap().is_err(), "{signals:?}: a fast stop does not wait");
        assert!(server.logs().contains("exiting now"), "{signals:?}");
    }
}

/// True once a connection to `addr` is refused (not accepted into a queue).
fn refused(addr: std::net::SocketAddr) -> Option<()> {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
        _ => None,
    }
}

#[test]
fn a_stop_serves_what_is_queued_then_refuses_new_connections() {
    use std::io::Write;
    let mut server = Server::start_example(&["--workers", "1", "--graceful-timeout", "10s"]);
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    let addr = server.addr;
    let slow = thread::spawn(move || get(addr, "/sleep?ms=3000"));
    server.wait_for_log("sleeping 3000ms", Duration::from_secs(10));
    // Stopped, the worker accepts nothing: these wait in the socket's queue.
    nix::sys::signal::kill(worker, Signal::SIGSTOP).unwrap();
    let mut queued: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for stream in &mut queued {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    }
    server.signal(Signal::SIGTERM);
    server.wait_for_log("closing the listening sockets", Duration::from_secs(5));
    nix::sys::signal::kill(worker, Signal::SIGCONT).unwrap();
    // Served, by the worker's accept loop or by the drain's sweep of the queue
    // (which of the two runs first after SIGCONT is the runtime's choice).
    for stream in &mut queued {
        let response = read_response(stream).expect("a queued connection is served");
        assert_eq!(response.status, 200);
    }
    server.wait_for_log("taken from the queue)", Duration::from_secs(5));
    // The request in flight is still running, and nothing accepts any more.
    eventually(Duration::from_secs(2), "new connections refused", || refused(addr));
    let response = slow.join().unwrap().expect("the in-flight request completes");
    assert_eq!(response.status, 200);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn after_the_master_is_killed_new_connections_are_refused_while_the_workers_drain() {
    let server = Server::start_example(&["--workers", "2", "--graceful-timeout", "10s"]);
    let addr = server.addr;
    let slow = thread::spawn(move || get(addr, "/sleep?ms=3000"));
    server.wait_for_log("sleeping 3000ms", Duration::from_secs(10));
    server.signal(Signal::SIGKILL);
    eventually(Duration::from_secs(2), "new connections refused", || refused(addr));
    let response = slow.join().unwrap().expect("the in-flight request completes");
    assert_eq!(response.status, 200);
}
