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

/// The fixture with 2 workers and `args`, both started; its ready line says
/// `mode`, if one is given.
fn two_workers(args: &[&str], mode: Option<&str>) -> Server {
    let server = Server::start_example(&[&["--workers", "2"], args].concat());
    server.wait_for_workers(2, Duration::from_secs(5));
    if let Some(mode) = mode {
        assert!(server.ready_line().contains(mode), "{}", server.ready_line());
    }
    server
}

fn over(waits: &[Duration], limit: Duration) -> usize {
    waits.iter().filter(|wait| **wait > limit).count()
}

#[test]
fn a_new_connection_never_waits_behind_a_blocked_worker() {
    let server = two_workers(&[], Some("(reuseport, steered by load)"));
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
    let server = two_workers(&["--balance", "lending"], Some("(reuseport, lending"));
    let waits = waits_while_a_worker_blocks(&server, Duration::from_secs(3), 40);
    let worst = waits.iter().max().unwrap();
    assert_eq!(over(&waits, Duration::from_secs(1)), 0, "worst {worst:?}: {waits:?}");
    server.wait_for_log("lent to a sibling", Duration::from_secs(1));
    server.wait_for_log("beats again", Duration::from_secs(5));
}

#[test]
fn the_kernels_hash_alone_keeps_connections_behind_a_blocked_worker() {
    // The mechanism, proved by its absence: half the connections wait.
    let server = two_workers(&["--balance", "reuseport"], None);
    let waits = waits_while_a_worker_blocks(&server, Duration::from_secs(3), 40);
    assert!(over(&waits, Duration::from_secs(1)) >= 5, "{waits:?}");
}

#[test]
fn cap_bpf_alone_is_enough_to_steer() {
    let mut command = bare_command("setpriv".into(), &["--inh-caps=-all", "--bounding-set=-all,+bpf", "--"]);
    command
        .arg(example_binary())
        .args(["--host", "127.0.0.1", "--port", "0", "--workers", "2"]);
    let server = Server::start_command(command);
    server.wait_for_workers(2, Duration::from_secs(5));
    assert!(
        server.ready_line().contains("steered by load"),
        "{}",
        server.ready_line()
    );
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
    server.wait_for_log("runs again: steered to as before", Duration::from_secs(2));

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

#[test]
fn a_slot_scaled_away_while_its_sibling_is_at_its_file_limit_is_never_left_without_a_taker() {
    for balance in ["steered", "reuseport"] {
        let server = two_workers(&["--balance", balance], None);
        let survivor = pid_in(&server.wait_for_log("worker 0 (pid", Duration::from_secs(5))).unwrap();
        limit_files(survivor, 2);
        let at_limit = format!("worker 0 (pid {survivor}): accept failed: Too many open files");
        let mut held = Vec::new();
        eventually(Duration::from_secs(10), "worker 0 at its file limit", || {
            held.push(std::net::TcpStream::connect(server.addr).unwrap());
            server.logs().contains(&at_limit).then_some(())
        });
        // Slot 1 scaled away: its socket goes to worker 0, which has no fd
        // left to take it with.
        server.signal(Signal::SIGTTOU);
        server.wait_for_log(
            &format!("pid {survivor} could not take slot 1's socket"),
            Duration::from_secs(5),
        );
        server.wait_for_workers(1, Duration::from_secs(10));
        drop(held);
        let unanswered = (0..200)
            .filter(|_| {
                let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                send_request(&mut stream, "GET", "/", false).unwrap();
                let mut answer = Vec::new();
                std::io::Read::read_to_end(&mut stream, &mut answer).is_err() || answer.is_empty()
            })
            .count();
        assert_eq!(
            unanswered, 0,
            "--balance {balance}: {unanswered} of 200 unanswered within 2 s"
        );
    }
}

#[test]
fn steered_reloads_scaling_and_an_upgrade_under_load_lose_nothing() {
    let mut server = two_workers(&["--graceful-timeout", "10s"], Some("steered by load"));
    let keep_alive = crate::load::Load::start(server.addr, 8);
    let closing = crate::load::Load::start_closing(server.addr, 8);
    let traffic = |at_least: u64| {
        keep_alive.wait_for_traffic(at_least);
        closing.wait_for_traffic(at_least);
    };
    traffic(200);
    server.signal(Signal::SIGHUP);
    server.wait_for_log_count("reload complete", 1, Duration::from_secs(30));
    traffic(200);
    // One at a time: signals of one kind sent together arrive as one.
    for workers in 3..=12 {
        server.signal(Signal::SIGTTIN);
        server.wait_for_workers(workers, Duration::from_secs(10));
    }
    traffic(200);
    for workers in (2..=11).rev() {
        server.signal(Signal::SIGTTOU);
        server.wait_for_workers(workers, Duration::from_secs(20));
    }
    traffic(200);
    server.signal(Signal::SIGUSR2);
    server.follow_upgrade(Duration::from_secs(30));
    server.wait_for_workers(2, Duration::from_secs(10));
    traffic(200);
    let (keep_alive, closing) = (keep_alive.finish(), closing.finish());
    keep_alive.assert_clean("keep-alive, steered", 1000);
    closing.assert_clean("Connection: close, steered", 1000);

    // The new master steers (it took the program over): a blocked worker
    // gets no new connection.
    let waits = waits_while_a_worker_blocks(&server, Duration::from_secs(2), 20);
    assert_eq!(over(&waits, Duration::from_millis(250)), 0, "{waits:?}");

    // A kill -9 fails at most the connections the killed worker held.
    let closing = crate::load::Load::start_closing(server.addr, 8);
    closing.wait_for_traffic(200);
    let victim = server.workers()[0];
    // Stopped first, so that what it holds is counted as it is killed.
    nix::sys::signal::kill(victim, Signal::SIGSTOP).unwrap();
    let held = established_connections(victim, server.addr.port());
    nix::sys::signal::kill(victim, Signal::SIGKILL).unwrap();
    server.wait_for_log(&format!("(pid {victim}) killed by SIGKILL"), Duration::from_secs(5));
    server.wait_for_workers(2, Duration::from_secs(10));
    closing.wait_for_traffic(200);
    let tally = closing.finish();
    assert!(
        tally.failures.len() <= held,
        "a kill -9 of a worker holding {held} connections failed {}: {:?}",
        tally.failures.len(),
        tally.failures
    );
}

#[test]
fn the_admin_views_show_a_stalled_slot() {
    let server = two_workers(&["--admin", "127.0.0.1:0", "--balance", "lending"], None);
    let addr = server.addr;
    let blocking = std::thread::spawn(move || get(addr, "/block?ms=2500"));
    server.wait_for_log("blocking", Duration::from_secs(5));
    // New connections, some of them hashed to the blocked worker's socket.
    let clients: Vec<_> = (0..8).map(|_| std::thread::spawn(move || get(addr, "/"))).collect();
    let stalled = eventually(Duration::from_secs(2), "a slot shown stalled", || {
        let response = get(server.admin_addr(), "/status").ok()?;
        let status: serde_json::Value = serde_json::from_str(&response.body).ok()?;
        assert_eq!(status["steering"], "lending", "the mode in force");
        let slots = status["slots"].as_array()?.clone();
        slots.into_iter().find(|slot| slot["stalled"] == true)
    });
    assert_eq!(stalled["in_flight"], 1, "the blocked request: {stalled}");
    let metrics = get(server.admin_addr(), "/metrics").unwrap().body;
    let slot = stalled["slot"].as_u64().unwrap();
    assert!(
        metrics.contains(&format!("prefork_stalled{{slot=\"{slot}\"}} 1")),
        "{metrics}"
    );
    for client in clients {
        client.join().unwrap().expect("answered, by the sibling");
    }
    blocking.join().unwrap().unwrap();
}

#[test]
fn the_admin_views_show_each_slots_load_queue_and_what_was_steered_there() {
    let server = two_workers(&["--admin", "127.0.0.1:0"], None);
    for _ in 0..20 {
        get(server.addr, "/").unwrap();
    }
    let addr = server.addr;
    let blocking = std::thread::spawn(move || get(addr, "/block?ms=1500"));
    server.wait_for_log("blocking", Duration::from_secs(5));
    let status = eventually(Duration::from_secs(2), "20 steered, 1 in flight", || {
        let response = get(server.admin_addr(), "/status").ok()?;
        let status: serde_json::Value = serde_json::from_str(&response.body).ok()?;
        assert_eq!(status["steering"], "steered by load", "the mode in force");
        let slots = status["slots"].as_array()?.clone();
        let sum = |key: &str| slots.iter().filter_map(|slot| slot[key].as_u64()).sum::<u64>();
        (sum("steered") >= 21 && sum("in_flight") == 1).then_some(slots)
    });
    assert!(status.iter().all(|slot| slot["queue"].is_u64()), "{status:?}");
    let metrics = get(server.admin_addr(), "/metrics").unwrap().body;
    assert!(
        metrics.contains("prefork_steering{mode=\"steered by load\"} 1"),
        "{metrics}"
    );
    for name in [
        "prefork_in_flight{",
        "prefork_listen_queue{",
        "prefork_steered_total{",
        "prefork_stalled{",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics:\n{metrics}");
    }
    blocking.join().unwrap().unwrap();
}

/// Two SO_REUSEPORT sockets on one port, bound by the test, as systemd binds
/// a socket unit's `ListenStream=` twice with `ReusePort=yes`.
fn systemd_sockets() -> Vec<std::net::TcpListener> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    (0..2)
        .map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_reuse_port(true).unwrap();
            socket.bind(&addr.into()).unwrap();
            socket.listen(128).unwrap();
            let listener: std::net::TcpListener = socket.into();
            addr = listener.local_addr().unwrap();
            listener
        })
        .collect()
}

/// The fixture on `sockets`, passed as systemd's socket activation does.
fn activated(sockets: &[std::net::TcpListener]) -> Server {
    use command_fds::{CommandFdExt, FdMapping};
    let mut command = std::process::Command::new("sh");
    let script = format!(
        "LISTEN_PID=$$ LISTEN_FDS=2 exec {} --workers 2",
        example_binary().display()
    );
    command.arg("-c").arg(script);
    let mappings = (sockets.iter().enumerate())
        .map(|(index, socket)| FdMapping {
            parent_fd: socket.try_clone().unwrap().into(),
            child_fd: 3 + index as i32,
        })
        .collect();
    command.fd_mappings(mappings).unwrap();
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Server::start_command(command)
}

#[test]
fn a_restart_on_sockets_systemd_kept_steers_again() {
    // systemd keeps the sockets, and the program the first master attached to
    // them stays with their group: the next master must take them back.
    let sockets = systemd_sockets();
    let first = activated(&sockets);
    first.wait_for_workers(2, Duration::from_secs(5));
    assert!(first.ready_line().contains("steered by load"), "{}", first.ready_line());
    first.signal(Signal::SIGKILL);
    eventually(Duration::from_secs(5), "the first server's workers gone", || {
        first.workers().is_empty().then_some(())
    });
    drop(first);
    let second = activated(&sockets);
    second.wait_for_workers(2, Duration::from_secs(5));
    assert!(
        second.ready_line().contains("steered by load"),
        "{}",
        second.ready_line()
    );
    let waits = waits_while_a_worker_blocks(&second, Duration::from_secs(2), 20);
    assert_eq!(over(&waits, Duration::from_millis(250)), 0, "{waits:?}");
}
