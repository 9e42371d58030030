//! Health: hung workers are replaced (`--timeout`), a suspended master kills
//! nobody, bloated workers are recycled (`--max-worker-memory`).

use std::time::Duration;

use nix::sys::signal::{kill, Signal};

use crate::util::*;

#[test]
fn a_hung_worker_is_killed_and_its_slot_serves_again() {
    let server = Server::start(&["--workers", "1", "--timeout", "2s"]);
    let hung = server.wait_for_workers(1, Duration::from_secs(5))[0];
    kill(hung, Signal::SIGSTOP).unwrap(); // its event loop stops beating
    let line = server.wait_for_log(&format!("(pid {hung}) timed out after 2.0s"), Duration::from_secs(10));
    assert!(line.contains("SIGABRT"), "{line}");
    let pid = eventually(Duration::from_secs(10), "a new worker answers", || {
        try_worker_pid(server.addr).filter(|pid| *pid != hung)
    });
    assert!(server.workers().contains(&pid));
    eventually(Duration::from_secs(5), "the hung worker is gone", || {
        (!alive(hung)).then_some(())
    });
}

#[test]
fn a_suspended_master_kills_no_healthy_worker() {
    let server = Server::start(&["--workers", "2", "--timeout", "2s"]);
    let mut before = server.wait_for_workers(2, Duration::from_secs(5));
    server.signal(Signal::SIGSTOP);
    // The suspension itself is what is tested: 4 s, twice the timeout.
    std::thread::sleep(Duration::from_secs(4));
    server.signal(Signal::SIGCONT);
    server.wait_for_log("did not run for", Duration::from_secs(5));
    // Proving that nothing happens needs a window: longer than the timeout.
    std::thread::sleep(Duration::from_secs(3));
    let mut after = server.workers();
    before.sort();
    after.sort();
    assert_eq!(before, after, "no worker was killed");
    assert!(!server.logs().contains("timed out"));
}

#[test]
fn a_worker_over_the_memory_limit_is_recycled_gracefully() {
    let server = Server::start_example(&["--workers", "1", "--max-worker-memory", "64MiB"]);
    let bloated = server.wait_for_workers(1, Duration::from_secs(5))[0];
    let response = get(server.addr, "/alloc?mb=100").unwrap();
    assert!(response.body.starts_with("leaked 100 MiB"), "{}", response.body);
    let line = server.wait_for_log(&format!("(pid {bloated}) uses "), Duration::from_secs(10));
    assert!(line.contains("over --max-worker-memory 64 MiB: recycling it"), "{line}");
    let pid = eventually(Duration::from_secs(10), "the replacement answers", || {
        get(server.addr, "/").ok()?.worker_pid().filter(|pid| *pid != bloated)
    });
    assert!(server.workers().contains(&pid));
    // Recycled, not killed: the old worker drained and exited 0.
    server.wait_for_log(&format!("(pid {bloated}) exited with code 0"), Duration::from_secs(10));
}
