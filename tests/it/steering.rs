//! How new connections reach the workers when one of them is busy: steered
//! by load in the kernel (the default), its socket lent to a sibling when it
//! stalls (`--balance lending`), or the kernel's hash alone (`reuseport`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

/// How long each of `n` new connections, opened one every 50 ms while one
/// worker's thread is blocked for `block`, waited for its answer (a
/// connection not answered within 10 s counts as 10 s).
fn waits_while_a_worker_blocks(server: &Server, block: Duration, n: usize) -> Vec<Duration> {
    let addr = server.addr;
    let blocking = std::thread::spawn(move || get(addr, &format!("/block?ms={}", block.as_millis())));
    server.wait_for_log("blocking", Duration::from_secs(5));
    let waits = waits_of_new_connections(addr, n);
    blocking.join().unwrap().expect("the blocking request is answered");
    waits
}

/// Opens `n` new connections, one every 50 ms, each asking `/` in a thread of
/// its own; returns how long each waited for its answer.
fn waits_of_new_connections(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let clients: Vec<_> = (0..n)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::thread::spawn(move || {
                let began = Instant::now();
                match get(addr, "/") {
                    Ok(response) if response.status == 200 => began.elapsed(),
                    _ => Duration::from_secs(10),
                }
            })
        })
        .collect();
    clients.into_iter().map(|client| client.join().unwrap()).collect()
}

fn over(waits: &[Duration], limit: Duration) -> usize {
    waits.iter().filter(|wait| **wait > limit).count()
}

#[test]
fn a_new_connection_never_waits_behind_a_blocked_worker() {
    let server = Server::start_example(&["--workers", "2"]);
    server.wait_for_workers(2, Duration::from_secs(5));
    assert!(
        server.ready_line().contains("(reuseport, steered by load)"),
        "{}",
        server.ready_line()
    );
    let waits = waits_while_a_worker_blocks(&server, Duration::from_secs(3), 40);
    let worst = waits.iter().max().unwrap();
    assert_eq!(
        over(&waits, Duration::from_millis(250)),
        0,
        "none waits: worst {worst:?}, {waits:?}"
    );
}

#[test]
fn without_the_kernel_program_a_stalled_workers_socket_is_lent_within_a_second() {
    let server = Server::start_example(&["--workers", "2", "--balance", "lending"]);
    server.wait_for_workers(2, Duration::from_secs(5));
    assert!(
        server.ready_line().contains("(reuseport, lending"),
        "{}",
        server.ready_line()
    );
    let waits = waits_while_a_worker_blocks(&server, Duration::from_secs(3), 40);
    let worst = waits.iter().max().unwrap();
    assert_eq!(over(&waits, Duration::from_secs(1)), 0, "worst {worst:?}: {waits:?}");
    server.wait_for_log("lent to a sibling", Duration::from_secs(1));
    server.wait_for_log("beats again", Duration::from_secs(5));
}

#[test]
fn the_kernels_hash_alone_keeps_connections_behind_a_blocked_worker() {
    // The mechanism, proved by its absence: half the connections wait.
    let server = Server::start_example(&["--workers", "2", "--balance", "reuseport"]);
    server.wait_for_workers(2, Duration::from_secs(5));
    let waits = waits_while_a_worker_blocks(&server, Duration::from_secs(3), 40);
    assert!(over(&waits, Duration::from_secs(1)) >= 5, "{waits:?}");
}

#[test]
fn without_the_privilege_to_load_it_the_server_lends_and_says_why() {
    let mut command = bare_command(
        "setpriv".into(),
        &["--inh-caps=-all", "--bounding-set=-bpf,-sys_admin,-perfmon", "--"],
    );
    command
        .arg(example_binary())
        .args(["--host", "127.0.0.1", "--port", "0", "--workers", "2"]);
    let server = Server::start_command(command);
    server.wait_for_workers(2, Duration::from_secs(5));
    let line = server.ready_line();
    assert!(line.contains("(reuseport, lending"), "{line}");
    let warning = server.wait_for_log("not steered by load", Duration::from_secs(1));
    assert!(warning.contains("CAP_BPF"), "names the cause: {warning}");
    let waits = waits_while_a_worker_blocks(&server, Duration::from_secs(3), 20);
    assert_eq!(over(&waits, Duration::from_secs(1)), 0, "{waits:?}");
}

#[test]
fn a_stopped_command_gets_no_new_connections_and_a_crash_looping_one_neither() {
    let hello = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/exec/hello.py");
    let marker = temp_path("slot-1-crashes");
    // Slot 1's command fails at once while the marker exists: a crash loop.
    let script = format!(
        "[ \"$PREFORK_SLOT\" = 1 ] && [ -e {} ] && exit 1; exec python3 {}",
        marker.display(),
        hello.display()
    );
    let server = Server::start(&["--workers", "2", "--", "sh", "-c", &script]);
    let commands = server.wait_for_workers(2, Duration::from_secs(10));
    assert!(
        server.ready_line().contains("steered by load"),
        "{}",
        server.ready_line()
    );
    // One command stopped (SIGSTOP): after the master's next look, every
    // new connection goes to the other.
    let stopped = commands[0];
    nix::sys::signal::kill(stopped, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let waits = waits_of_new_connections(server.addr, 20);
    nix::sys::signal::kill(stopped, Signal::SIGCONT).unwrap();
    assert_eq!(over(&waits, Duration::from_secs(1)), 0, "{waits:?}");

    // Slot 1 crash-looping: its socket gets nothing while it backs off.
    std::fs::write(&marker, "").unwrap();
    let slot1 = commands
        .iter()
        .copied()
        .find(|pid| slot_of_command(*pid) == Some(1))
        .expect("slot 1's command");
    nix::sys::signal::kill(slot1, Signal::SIGKILL).unwrap();
    server.wait_for_log("backing off", Duration::from_secs(5));
    let waits = waits_of_new_connections(server.addr, 40);
    let _ = std::fs::remove_file(&marker);
    assert_eq!(over(&waits, Duration::from_secs(1)), 0, "{waits:?}");
}

/// The slot a command runs in (its `PREFORK_SLOT`).
fn slot_of_command(pid: nix::unistd::Pid) -> Option<usize> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let entry = environ
        .split(|byte| *byte == 0)
        .find_map(|entry| entry.strip_prefix(b"PREFORK_SLOT="))?;
    std::str::from_utf8(entry).ok()?.parse().ok()
}
