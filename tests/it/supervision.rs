//! Workers die; the master reaps them, respawns their slots, and backs off.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};

use crate::util::*;

#[test]
fn a_killed_worker_is_reaped_and_replaced_in_its_slot() {
    let server = Server::start(&["--workers", "2"]);
    let before = server.wait_for_workers(2, Duration::from_secs(5));
    let victim = before[0];
    kill(victim, Signal::SIGKILL).unwrap();
    let after = eventually(Duration::from_secs(10), "a replacement worker and no zombie", || {
        let workers = server.workers();
        let replaced = workers.len() == 2 && !workers.contains(&victim);
        (replaced && server.zombies().is_empty()).then_some(workers)
    });
    let line = server.wait_for_log(&format!("(pid {victim}) killed by SIGKILL"), Duration::from_secs(5));
    assert!(line.contains("respawning"), "{line}");
    // Every answer now comes from the new set of workers.
    for _ in 0..10 {
        let pid = get(server.addr, "/").unwrap().worker_pid().unwrap();
        assert!(after.contains(&pid), "{pid} answered; workers are {after:?}");
    }
}

#[test]
fn connections_queued_on_a_dead_worker_are_served_by_its_replacement() {
    for balance in ["reuseport", "shared"] {
        let server = Server::start(&["--workers", "1", "--balance", balance]);
        let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
        kill(worker, Signal::SIGSTOP).unwrap();
        // The kernel completes these handshakes into the slot's accept queue.
        let mut clients: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut stream = TcpStream::connect(server.addr).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                send_request(&mut stream, "GET", "/", false).unwrap();
                stream.flush().unwrap();
                stream
            })
            .collect();
        kill(worker, Signal::SIGKILL).unwrap();
        for (i, client) in clients.iter_mut().enumerate() {
            let response = read_response(client).unwrap_or_else(|err| panic!("{balance}: client {i}: {err}"));
            assert_eq!(response.status, 200, "{balance}: client {i}");
            let pid = response.worker_pid().unwrap();
            assert_ne!(pid, worker, "{balance}: the stopped worker cannot have answered");
        }
    }
}

/// The newest worker of `slot`, from the spawn lines.
fn newest_worker_of(server: &Server, slot: usize) -> Option<nix::unistd::Pid> {
    let prefix = format!("worker {slot} (pid ");
    let logs = server.logs();
    let line = logs
        .lines()
        .rev()
        .find(|line| line.contains(&prefix) && line.ends_with(") spawned"))?;
    let pid = line.split(&prefix).nth(1)?.split(')').next()?.parse().ok()?;
    Some(nix::unistd::Pid::from_raw(pid))
}

/// Slot 0's workers die young while slot 1's serves: slot 0 backs off,
/// doubling, and recovers.
#[test]
fn a_slot_whose_workers_die_young_backs_off_then_recovers() {
    let server = Server::start(&["--workers", "2"]);
    let mut victim = newest_worker_of(&server, 0).expect("slot 0 has a worker");
    for _ in 0..3 {
        kill(victim, Signal::SIGKILL).unwrap();
        victim = eventually(Duration::from_secs(10), "slot 0's next worker", || {
            newest_worker_of(&server, 0).filter(|pid| *pid != victim)
        });
    }
    let delays: Vec<u64> = server
        .logs()
        .lines()
        .filter_map(|line| line.split("respawning in ").nth(1)?.split("ms").next()?.parse().ok())
        .collect();
    assert!(
        delays.len() >= 2,
        "expected backoff lines, got {delays:?}\n{}",
        server.logs()
    );
    assert!(
        delays.windows(2).all(|pair| pair[1] == pair[0] * 2),
        "delays must double: {delays:?}"
    );
    assert!(server.logs().contains("(backing off)"));
    // The slot recovers: both workers serve again.
    server.wait_for_workers(2, Duration::from_secs(10));
    assert!(server.workers().contains(&victim));
}

/// A kill storm takes every worker down again and again, each young: backoff
/// must not leave the service with no worker. The last slot with a ready
/// worker is respawned at once, so the server answers right after the storm
/// (with every slot backing off, the last respawn would be 10 s away).
#[test]
fn a_kill_storm_never_leaves_the_service_without_a_worker() {
    let server = Server::start(&["--workers", "2"]);
    let mut rounds_without_a_worker = 0;
    for _ in 0..40 {
        let workers = server.workers();
        rounds_without_a_worker += usize::from(workers.is_empty());
        for pid in workers {
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50)); // the storm's pace
    }
    assert_eq!(
        rounds_without_a_worker, 0,
        "50 ms after each round of kills a worker was up again"
    );
    eventually(Duration::from_secs(2), "an answer right after the storm", || {
        get(server.addr, "/").ok().filter(|response| response.status == 200)
    });
    assert!(server.logs().contains("respawning now"), "{}", server.logs());
}

#[test]
fn every_first_worker_failing_to_boot_halts_the_master_with_the_cause() {
    let marker = temp_path("halt");
    std::fs::write(&marker, "").unwrap();
    let mut command = command(example_binary(), &["--workers", "2"]);
    command.env("FIXTURE_FAIL_IF_EXISTS", &marker);
    let (status, stdout, stderr) = run_to_exit(command, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stdout.contains("listening on"), "never ready: {stdout}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("fixture: every worker failed to boot; worker"),
        "{last}"
    );
    assert!(last.contains("refusing to start"), "the cause is named: {last}");
    assert!(stderr.contains("exited with code 3 (boot failure)"), "{stderr}");
}

#[test]
fn a_panicking_worker_exits_70_and_is_logged() {
    let mut command = command(example_binary(), &["--workers", "1"]);
    command.env("FIXTURE_PANIC", "1").env("RUST_BACKTRACE", "0");
    let (status, _, stderr) = run_to_exit(command, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "no worker ever booted: {stderr}");
    assert!(stderr.contains("exited with code 70 (panic)"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.ends_with("the service factory panicked: FIXTURE_PANIC is set"),
        "{last}"
    );
}

#[test]
fn other_signals_are_logged_and_ignored() {
    let server = Server::start(&["--workers", "2"]);
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    // USR1 without log files to reopen: nothing to do, and nobody dies of it.
    server.signal(Signal::SIGUSR1);
    server.wait_for_log("SIGUSR1: log files reopened; 2 workers told", Duration::from_secs(5));
    server.wait_for_log_count("SIGUSR1: log files reopened", 3, Duration::from_secs(5));
    // Signals outside the table, whose default action would end the master.
    let stray = [
        libc::SIGALRM,
        libc::SIGIO,
        libc::SIGPROF,
        libc::SIGVTALRM,
        libc::SIGPWR,
        libc::SIGSYS,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGSTKFLT,
        libc::SIGTRAP,
        libc::SIGRTMIN() + 3,
        libc::SIGRTMAX(),
    ];
    for raw in stray {
        // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
        assert_eq!(unsafe { libc::kill(server.master.as_raw(), raw) }, 0);
        // One at a time: the log names each, and none coalesces with another.
        let name = Signal::try_from(raw).map_or(format!("SIGRTMIN+{}", raw - libc::SIGRTMIN()), |s| s.as_str().into());
        server.wait_for_log(
            &format!("ignoring {name}: not in the signal table"),
            Duration::from_secs(5),
        );
    }
    assert!(alive(server.master), "the master survived every one");
    // Workers ignore them too (a HUP to the whole process group must not kill them).
    for worker in &workers {
        kill(*worker, Signal::SIGHUP).unwrap();
        kill(*worker, Signal::SIGUSR2).unwrap();
        // Delivered (no longer pending) before anything is checked: a worker
        // that died of it would be gone by then.
        eventually(Duration::from_secs(5), "the signals delivered", || {
            (!signals_pending(*worker, &[Signal::SIGHUP, Signal::SIGUSR2])).then_some(())
        });
    }
    assert_eq!(get(server.addr, "/").unwrap().status, 200);
    assert!(workers.iter().all(|pid| alive(*pid)));
    let mut after = server.workers();
    after.sort();
    let mut before = workers;
    before.sort();
    assert_eq!(after, before, "no worker was touched");
}

#[test]
fn accept_errors_back_off_instead_of_spinning() {
    // A file limit low enough that accept fails with EMFILE once 16 clients hold
    // connections open; the worker must retry every 100 ms, not in a busy loop.
    let binary = server_binary();
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg(format!(
        "ulimit -n 24 && exec {} --host 127.0.0.1 --port 0 --workers 1",
        binary.display()
    ));
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let server = Server::start_command(command);
    let clients: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    server.wait_for_log("Too many open files", Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(1)); // a window to count retries in
    let retries = server.logs().matches("accept failed").count();
    assert!(retries <= 15, "{retries} accept retries in about 1 s: the loop spins");
    drop(clients);
    let pid = eventually(Duration::from_secs(10), "the worker serves again", || {
        try_worker_pid(server.addr)
    });
    assert!(server.workers().contains(&pid));
}

#[test]
fn a_later_boot_failure_backs_off_and_leaves_the_healthy_worker_serving() {
    let marker = temp_path("later");
    let mut command = command(example_binary(), &["--workers", "2"]);
    command.env("FIXTURE_FAIL_IF_EXISTS", &marker);
    let server = Server::start_command(command);
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    std::fs::write(&marker, "").unwrap();
    kill(workers[0], Signal::SIGKILL).unwrap();
    server.wait_for_log("before it was ready; respawning in 200ms", Duration::from_secs(10));
    server.wait_for_log(
        &format!("pid {} accepts on its socket meanwhile", workers[1]),
        Duration::from_secs(5),
    );
    // Connections hashed to the failing slot's socket are served by the sibling
    // that adopted it, instead of waiting out the backoff.
    for _ in 0..20 {
        let response = get(server.addr, "/").expect("every connection is answered during the backoff");
        assert_eq!(response.worker_pid(), Some(workers[1]));
    }
    assert!(alive(server.master) && alive(workers[1]));
    std::fs::remove_file(&marker).unwrap();
    let after = server.wait_for_workers(2, Duration::from_secs(15));
    assert!(after.contains(&workers[1]) && !after.contains(&workers[0]));
    let recovered = after.iter().find(|pid| **pid != workers[1]).unwrap();
    server.wait_for_log(&format!("worker 0 (pid {recovered}) ready"), Duration::from_secs(5));
}

#[test]
fn a_worker_at_its_file_limit_refuses_a_sibling_socket_and_serves_on() {
    let marker = temp_path("fdlimit");
    let mut command = command(example_binary(), &["--workers", "2"]);
    command.env("FIXTURE_FAIL_IF_EXISTS", &marker);
    let server = Server::start_command(command);
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    // Worker 1 may open two more files, then no more.
    limit_files(workers[1], 2);
    let mut clients = Vec::new();
    let at_limit = format!("worker 1 (pid {}): accept failed: Too many open files", workers[1]);
    eventually(Duration::from_secs(10), "worker 1 at its file limit", || {
        clients.push(TcpStream::connect(server.addr).unwrap());
        server.logs().contains(&at_limit).then_some(())
    });
    // Slot 0 cannot boot now: the master hands its socket to worker 1, which
    // cannot receive it (the kernel truncates the message: no fd left).
    std::fs::write(&marker, "").unwrap();
    kill(workers[0], Signal::SIGKILL).unwrap();
    server.wait_for_log(
        &format!("pid {} could not take slot 0's socket", workers[1]),
        Duration::from_secs(10),
    );
    assert!(!server.logs().contains("the master is gone"), "{}", server.logs());
    drop(clients);
    std::fs::remove_file(&marker).unwrap();
    eventually(Duration::from_secs(15), "worker 1 serves on", || {
        (try_worker_pid(server.addr) == Some(workers[1])).then_some(())
    });
    assert!(alive(workers[1]));
}

#[test]
fn killing_the_master_takes_every_worker_down() {
    let server = Server::start(&["--workers", "2"]);
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    server.signal(Signal::SIGKILL);
    eventually(
        Duration::from_secs(2),
        "every worker exits after the master died",
        || workers.iter().all(|pid| !alive(*pid)).then_some(()),
    );
}

/// Of what the master holds, `child` holds only what it needs (`needs`, all
/// of which it must hold) and nothing else but its standard streams.
fn holds_only_what_it_needs(master: nix::unistd::Pid, child: nix::unistd::Pid, needs: &[String]) {
    let masters: std::collections::BTreeSet<String> = fd_targets(master).into_values().collect();
    // What the test itself holds reached the server from outside (the test
    // runner's own files): the app's, as far as the master can tell.
    let outside: std::collections::BTreeSet<String> = fd_targets(nix::unistd::Pid::this()).into_values().collect();
    let childs = fd_targets(child);
    assert!(!childs.is_empty(), "cannot read /proc/{child}/fd");
    for (fd, target) in &childs {
        if *fd <= 2 || !masters.contains(target) || outside.contains(target) {
            continue; // its standard streams, its own (its runtime, its end of the channel), or from outside
        }
        assert!(
            needs.contains(target),
            "pid {child} holds fd {fd} -> {target} of the master's; it needs only {needs:?}"
        );
    }
    for need in needs {
        assert!(
            childs.values().any(|target| target == need),
            "pid {child} lacks {need}: {childs:?}"
        );
    }
}

/// The one serving socket of the master's that `worker` holds (a worker
/// holds its own slot's socket, and no sibling's).
fn own_serving_socket(master: nix::unistd::Pid, worker: nix::unistd::Pid, port: u16) -> String {
    let serving = listening_on(port);
    let held: std::collections::BTreeSet<String> = fd_targets(worker)
        .into_values()
        .filter(|target| serving.contains(target))
        .collect();
    assert_eq!(
        held.len(),
        1,
        "worker {worker} holds {held:?} of the serving sockets {serving:?}"
    );
    let _ = master;
    held.into_iter().next().unwrap()
}

/// Every kind of child of the master (a worker, an exec-mode command, the
/// admin process) holds only what it needs of the master's fds: a worker its
/// slot's socket, the admin socket and the log file; the admin process the
/// admin socket and the log file; a command its socket (on fd 3). A file the
/// app opened before `run_with` stays open in its workers.
#[test]
fn every_child_holds_only_what_it_needs_of_the_masters_fds() {
    let dir = tempdir("children-fds");
    let log = dir.canonicalize().unwrap().join("children.log");
    let early = dir.canonicalize().unwrap().join("opened-before-run-with");
    let log_arg = log.to_str().unwrap();
    let mut command = command(
        example_binary(),
        &["--workers", "2", "--admin", "127.0.0.1:0", "--log-file", log_arg],
    );
    command.env("FIXTURE_OPEN_BEFORE", &early);
    // As under systemd: the master's socket to systemd is the master's alone.
    let systemd = std::os::unix::net::UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    command.env("NOTIFY_SOCKET", dir.join("notify.sock"));
    let server = Server::start_command(command);
    let _ = &systemd;
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    let admin = listening_on(server.admin_addr().port());
    assert_eq!(admin.len(), 1, "{admin:?}");
    for worker in &workers {
        let own = own_serving_socket(server.master, *worker, server.addr.port());
        let mut needs = vec![own, admin[0].clone(), log.to_string_lossy().into_owned()];
        needs.push(early.to_string_lossy().into_owned());
        holds_only_what_it_needs(server.master, *worker, &needs);
    }

    let hello = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/exec/hello.py");
    let exec = Server::start(&[
        "--workers",
        "2",
        "--admin",
        "127.0.0.1:0",
        "--log-file",
        log_arg,
        "--",
        "python3",
        hello.to_str().unwrap(),
    ]);
    let children: Vec<nix::unistd::Pid> =
        eventually(Duration::from_secs(5), "two commands and the admin process", || {
            let children: Vec<nix::unistd::Pid> = children(exec.master).into_iter().map(|(pid, _)| pid).collect();
            (children.len() == 3).then_some(children)
        });
    let admin = listening_on(exec.admin_addr().port());
    let serving = listening_on(exec.addr.port());
    for child in children {
        let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
        if comm.trim() == "prefork-admin" {
            holds_only_what_it_needs(
                exec.master,
                child,
                &[admin[0].clone(), log.to_string_lossy().into_owned()],
            );
        } else {
            // A command: its slot's socket on fd 3, and of the master's nothing else.
            let own = fd_targets(child).get(&3).cloned().unwrap_or_default();
            assert!(
                serving.contains(&own),
                "command {child}'s fd 3 is {own}, not a serving socket"
            );
            holds_only_what_it_needs(exec.master, child, &[own]);
        }
    }
}

#[test]
fn a_new_master_holds_only_what_the_old_one_handed_it() {
    // An fd the master inherited without close-on-exec, as from a careless
    // parent: the old master holds it, the new one must not.
    let inherited = temp_path("inherited-by-the-old-master");
    let file = std::fs::File::create(&inherited).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut command = command(example_binary(), &["--workers", "1"]);
    // SAFETY: the hook runs in the forked child before the exec and makes one
    // system call, dup2(2), which is async-signal-safe; the copy on fd 9 is
    // inheritable (dup2 clears close-on-exec).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if libc::dup2(raw, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Server::start_command(command);
    let target = inherited.canonicalize().unwrap().to_string_lossy().into_owned();
    let holds = |pid: nix::unistd::Pid| fd_targets(pid).values().any(|held| *held == target);
    assert!(holds(server.master), "the old master holds the inherited file on fd 9");
    server.wait_for_workers(1, Duration::from_secs(5));

    server.signal(Signal::SIGUSR2);
    let new = server.follow_upgrade(Duration::from_secs(10));
    let workers = server.wait_for_workers(1, Duration::from_secs(5));
    assert!(
        !holds(new),
        "the new master {new} holds {target}: {:?}",
        fd_targets(new)
    );
    for worker in workers {
        assert!(!holds(worker), "the new master's worker {worker} holds {target}");
    }
    get(server.addr, "/").expect("the new master serves");
}
