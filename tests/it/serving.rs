//! What a client sees, and what the process tree looks like while it is served.

use std::collections::HashSet;
use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

#[test]
fn each_answer_names_a_worker_that_is_a_child_of_the_master() {
    let server = Server::start(&["--workers", "3"]);
    let workers: HashSet<_> = server.wait_for_workers(3, Duration::from_secs(5)).into_iter().collect();
    let response = get(server.addr, "/").unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/plain; charset=utf-8"));
    let pid = response.worker_pid().expect("body is `Hello from worker <pid>`");
    assert_eq!(response.body, format!("Hello from worker {pid}\n"));
    assert!(
        workers.contains(&pid),
        "{pid} is not one of the master's children {workers:?}"
    );

    // New connections are spread over the slots' sockets: 30 connections all
    // landing on one of 3 sockets has a chance of about 1e-14.
    let answered: HashSet<_> = (0..30)
        .map(|_| get(server.addr, "/").unwrap().worker_pid().unwrap())
        .collect();
    assert!(answered.is_subset(&workers), "{answered:?} not within {workers:?}");
    assert!(answered.len() > 1, "every connection went to one worker: {answered:?}");
}

#[test]
fn both_balance_modes_serve() {
    for balance in ["reuseport", "shared"] {
        let server = Server::start(&["--workers", "2", "--balance", balance]);
        let workers = server.wait_for_workers(2, Duration::from_secs(5));
        let pid = get(server.addr, "/").unwrap().worker_pid().unwrap();
        assert!(workers.contains(&pid), "{balance}: {pid} not in {workers:?}");
        let logs = server.logs();
        assert!(logs.contains(&format!("(--balance {balance})")), "{balance}: {logs}");
    }
}

#[test]
fn the_master_has_exactly_one_thread_while_serving() {
    let server = Server::start(&["--workers", "2"]);
    for _ in 0..20 {
        assert_eq!(get(server.addr, "/").unwrap().status, 200);
    }
    assert_eq!(thread_count(server.master), 1);
}

#[test]
fn head_has_no_body_and_other_methods_are_refused() {
    let server = Server::start(&["--workers", "1"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    send_request(&mut stream, "HEAD", "/", false).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n"), "HEAD must not carry a body: {raw:?}");

    let mut stream = TcpStream::connect(server.addr).unwrap();
    send_request(&mut stream, "POST", "/", false).unwrap();
    let response = read_response(&mut stream).unwrap();
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET, HEAD"));
}

#[test]
fn keep_alive_connections_are_reused() {
    let server = Server::start(&["--workers", "1"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let mut pids = HashSet::new();
    for _ in 0..5 {
        send_request(&mut stream, "GET", "/", true).unwrap();
        let response = read_response(&mut stream).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), None, "no close while serving");
        pids.insert(response.worker_pid().unwrap());
    }
    assert_eq!(pids.len(), 1);
}

#[test]
fn ipv6_loopback_serves_when_the_machine_has_it() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no ::1");
        return;
    }
    let command = bare_command(server_binary(), &["--host", "::1", "--port", "0", "--workers", "1"]);
    let server = Server::start_command(command);
    assert!(server.addr.is_ipv6());
    assert_eq!(get(server.addr, "/").unwrap().status, 200);
}

#[test]
fn the_header_read_timeout_closes_slow_and_idle_connections_but_not_busy_ones() {
    use std::io::{ErrorKind, Write};
    use std::time::Instant;
    let server = Server::start(&["--workers", "1", "--header-read-timeout", "1s"]);
    // A head that never completes (slowloris), and a keep-alive connection left
    // idle after one answer.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n").unwrap();
    let mut idle = TcpStream::connect(server.addr).unwrap();
    send_request(&mut idle, "GET", "/", true).unwrap();
    assert_eq!(read_response(&mut idle).unwrap().status, 200);
    for stream in [&slow, &idle] {
        stream.set_nonblocking(true).unwrap();
        let still_open = matches!((&*stream).read(&mut [0; 1]), Err(e) if e.kind() == ErrorKind::WouldBlock);
        assert!(still_open, "nothing is closed before the timeout");
        stream.set_nonblocking(false).unwrap();
    }
    // A connection that asks every 300 ms is never idle for a whole second.
    let mut busy = TcpStream::connect(server.addr).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        send_request(&mut busy, "GET", "/", true).unwrap();
        assert_eq!(
            read_response(&mut busy).unwrap().status,
            200,
            "a busy connection stays open"
        );
        std::thread::sleep(Duration::from_millis(300)); // the client's pace, not a wait
    }
    for (name, mut stream) in [("slow", slow), ("idle", idle)] {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let closed = match stream.read(&mut [0; 64]) {
            Ok(0) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        assert!(closed, "the {name} connection is closed after the header read timeout");
    }
}

#[test]
fn a_large_body_arrives_whole_and_in_order() {
    let server = Server::start_example(&["--workers", "1"]);
    for kb in [1usize, 100, 8192] {
        let response = get(server.addr, &format!("/bytes?kb={kb}")).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), kb << 10, "{kb} KiB");
        let expected = (0..kb << 10).map(|i| (b'a' + (i % 26) as u8) as char);
        assert!(response.body.chars().eq(expected), "{kb} KiB: the pattern is intact");
    }
}

/// An idle keep-alive connection is parked after a second (out of hyper and
/// of the runtime): its next request is served; one whose next request head has
/// begun is not parked, and that request is completed.
#[test]
fn a_parked_keep_alive_connection_serves_its_next_request() {
    use std::io::Write;
    let server = Server::start(&["--workers", "1", "--header-read-timeout", "10s", "--log-level", "debug"]);
    let mut idle = TcpStream::connect(server.addr).unwrap();
    send_request(&mut idle, "GET", "/", true).unwrap();
    assert_eq!(read_response(&mut idle).unwrap().status, 200);
    let mut begun = TcpStream::connect(server.addr).unwrap();
    send_request(&mut begun, "GET", "/", true).unwrap();
    assert_eq!(read_response(&mut begun).unwrap().status, 200);
    begun.write_all(b"GET / HTTP/1.1\r\nHost: te").unwrap();
    server.wait_for_log("connection is parked", Duration::from_secs(5));
    server.wait_for_log("request head begun: not parked", Duration::from_secs(5));
    send_request(&mut idle, "GET", "/", true).unwrap();
    assert_eq!(read_response(&mut idle).unwrap().status, 200, "parked, then served");
    begun.write_all(b"st\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut begun).unwrap().status,
        200,
        "the head begun before parking is completed"
    );
    for _ in 0..3 {
        send_request(&mut idle, "GET", "/", true).unwrap();
        assert_eq!(read_response(&mut idle).unwrap().status, 200, "and kept alive");
    }
}

/// A parked connection stays open and counted, leaves the count when its client
/// closes it, and is closed by the header read timeout (counted from its last
/// answer) and by the drain's idle grace, like one hyper still serves.
#[test]
fn a_parked_connection_is_counted_and_closed_by_the_idle_rules() {
    use std::io::ErrorKind;
    let open_connections = |server: &Server| -> u64 {
        let status = get(server.admin_addr(), "/status").unwrap();
        let status: serde_json::Value = serde_json::from_str(&status.body).unwrap();
        status["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["connections"].as_u64().unwrap())
            .sum()
    };
    let closed_within = |stream: &mut TcpStream, within: Duration| {
        stream.set_read_timeout(Some(within)).unwrap();
        match stream.read(&mut [0; 64]) {
            Ok(0) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    };
    let mut server = Server::start(&[
        "--workers",
        "1",
        "--admin",
        "127.0.0.1:0",
        "--header-read-timeout",
        "3s",
        "--graceful-timeout",
        "30s",
        "--log-level",
        "debug",
    ]);
    let mut kept = TcpStream::connect(server.addr).unwrap();
    let mut dropped = TcpStream::connect(server.addr).unwrap();
    for stream in [&mut kept, &mut dropped] {
        send_request(stream, "GET", "/", true).unwrap();
        assert_eq!(read_response(stream).unwrap().status, 200);
    }
    server.wait_for_log_count("connection is parked", 2, Duration::from_secs(5));
    assert_eq!(open_connections(&server), 2, "parked connections are open");
    drop(dropped);
    eventually(
        Duration::from_secs(5),
        "the closed parked connection leaves the count",
        || (open_connections(&server) == 1).then_some(()),
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(5)),
        "a parked connection is closed by the header read timeout"
    );
    eventually(
        Duration::from_secs(5),
        "the timed-out connection leaves the count",
        || (open_connections(&server) == 0).then_some(()),
    );

    let mut idle = TcpStream::connect(server.addr).unwrap();
    send_request(&mut idle, "GET", "/", true).unwrap();
    assert_eq!(read_response(&mut idle).unwrap().status, 200);
    server.wait_for_log_count("connection is parked", 3, Duration::from_secs(5));
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(5));
    assert!(
        status.success(),
        "the drain closes a parked connection after its grace: {status:?}"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(1)),
        "and the client sees it closed"
    );
}

/// At `--max-connections`, a worker stops accepting: the next connection waits
/// in the kernel's queue, unanswered, and is served as soon as one closes.
#[test]
fn at_max_connections_the_next_connection_waits_until_one_closes() {
    use std::io::Write;
    let server = Server::start(&["--workers", "1", "--max-connections", "2"]);
    let mut first = TcpStream::connect(server.addr).unwrap();
    let mut second = TcpStream::connect(server.addr).unwrap();
    for stream in [&mut first, &mut second] {
        send_request(stream, "GET", "/", true).unwrap();
        assert_eq!(read_response(stream).unwrap().status, 200);
    }
    let mut third = TcpStream::connect(server.addr).expect("the kernel queues it");
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    third.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut byte = [0u8; 1];
    let waited = third.read(&mut byte);
    assert!(
        matches!(&waited, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "not accepted while 2 are open: {waited:?}"
    );
    drop(first);
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let _ = third.read_to_end(&mut rest);
    let answer = [&byte[..0], &rest[..]].concat();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "served once one closed: {}",
        String::from_utf8_lossy(&answer)
    );
}

/// `--user nobody`: the master stays root (to bind on a reload), every worker
/// runs as nobody, with nobody's group alone, and serves. Needs root: the
/// machines this runs on (CI included) are.
#[test]
fn workers_run_as_the_user_and_group_asked_for() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: --user needs root to test");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("the nobody user");
    let server = Server::start(&["--workers", "2", "--user", "nobody"]);
    let ids = |pid: nix::unistd::Pid, field: &str| -> Vec<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|line| line.starts_with(field)).unwrap().to_owned();
        line.split_whitespace().skip(1).map(|id| id.parse().unwrap()).collect()
    };
    assert_eq!(ids(server.master, "Uid:"), [0, 0, 0, 0], "the master stays root");
    for worker in server.wait_for_workers(2, Duration::from_secs(5)) {
        let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
        assert_eq!(ids(worker, "Uid:"), [uid; 4], "worker {worker}");
        assert_eq!(ids(worker, "Gid:"), [gid; 4], "worker {worker}");
        assert_eq!(
            ids(worker, "Groups:"),
            [gid],
            "worker {worker}: no group of root's left"
        );
    }
    assert_eq!(get(server.addr, "/").unwrap().status, 200);
    // A worker killed is replaced as nobody too.
    let victim = server.workers()[0];
    nix::sys::signal::kill(victim, nix::sys::signal::Signal::SIGKILL).unwrap();
    let replacement = eventually(Duration::from_secs(5), "a replacement", || {
        server
            .workers()
            .into_iter()
            .find(|pid| *pid != victim && !ids(*pid, "Uid:").is_empty())
    });
    eventually(Duration::from_secs(5), "the replacement switched", || {
        (ids(replacement, "Uid:") == [nobody.uid.as_raw(); 4]).then_some(())
    });
    // The switch did not clear PDEATHSIG (a change of credentials would): the
    // workers go with the master.
    let workers = server.workers();
    nix::sys::signal::kill(server.master, nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(5), "every worker gone with the master", || {
        workers.iter().all(|pid| !alive(*pid)).then_some(())
    });
}

#[test]
fn an_unknown_user_is_a_startup_error() {
    let (status, _, err) = run_to_exit(
        command(server_binary(), &["--user", "no-such-user-here"]),
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("no such user 'no-such-user-here'"), "{err}");
    assert!(!err.contains("spawned"), "nothing was started: {err}");
}
