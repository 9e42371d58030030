//! Leaving a load balancer's rotation without losing a request: on TERM with
//! `--shutdown-delay`, `/readyz` fails first while everything keeps serving and
//! accepting; then the drain. `/livez` and the admin listener answer through
//! the whole stop.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

fn probe(server: &Server, path: &str) -> (u16, String) {
    let response = get(server.admin_addr(), path).expect("the admin listener answers");
    (response.status, response.body)
}

#[test]
fn a_term_with_a_shutdown_delay_fails_readyz_first_while_everything_serves() {
    let mut server = Server::start(&["--workers", "2", "--admin", "127.0.0.1:0", "--shutdown-delay", "2s"]);
    for path in ["/readyz", "/livez", "/healthz"] {
        assert_eq!(probe(&server, path), (200, "ok\n".to_owned()), "{path}");
    }
    let termed = Instant::now();
    server.signal(Signal::SIGTERM);
    let line = server.wait_for_log("leaving rotation", Duration::from_secs(5));
    assert!(line.contains("for 2.0s (--shutdown-delay)"), "{line}");
    assert_eq!(probe(&server, "/readyz"), (503, "stopping\n".to_owned()));
    assert_eq!(probe(&server, "/livez").0, 200, "alive while leaving rotation");
    // New connections are still accepted and served: the load balancer has
    // not noticed yet.
    for _ in 0..10 {
        let mut fresh = TcpStream::connect(server.addr).expect("still accepting");
        send_request(&mut fresh, "GET", "/", false).unwrap();
        assert_eq!(read_response(&mut fresh).unwrap().status, 200, "still serving");
    }
    assert!(
        termed.elapsed() < Duration::from_secs(2),
        "the checks above ran within the delay"
    );
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(termed.elapsed() >= Duration::from_secs(2), "the delay was honoured");
    assert!(server.logs().contains("the shutdown delay is over"));
}

#[test]
fn a_second_term_skips_the_shutdown_delay() {
    let mut server = Server::start(&["--workers", "1", "--shutdown-delay", "60s"]);
    server.signal(Signal::SIGTERM);
    server.wait_for_log("leaving rotation", Duration::from_secs(5));
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(!server.logs().contains("the shutdown delay is over"));
}

/// During the drain (no delay) a request is still in flight: the admin
/// listener answers, `/readyz` says stopping, `/livez` stays 200.
#[test]
fn readyz_fails_and_livez_holds_through_the_drain() {
    let mut server = Server::start_example(&["--workers", "1", "--admin", "127.0.0.1:0"]);
    let addr = server.addr;
    let slow = std::thread::spawn(move || get(addr, "/sleep?ms=3000"));
    server.wait_for_log("sleeping 3000ms", Duration::from_secs(10));
    server.signal(Signal::SIGTERM);
    server.wait_for_log("draining", Duration::from_secs(5));
    assert_eq!(probe(&server, "/readyz"), (503, "stopping\n".to_owned()));
    assert_eq!(probe(&server, "/livez"), (200, "ok\n".to_owned()));
    assert_eq!(slow.join().unwrap().unwrap().status, 200);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}
