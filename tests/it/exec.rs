//! Exec mode: the server supervises a program in another language, which finds
//! its socket on fd 3 and speaks sd_notify to the master, with real programs
//! (the Python and Node.js examples, gunicorn).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::load::Load;
use crate::util::*;

pub(crate) fn script(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/exec")
        .join(name);
    path.to_string_lossy().into_owned()
}

/// `flags`, `--`, then the command every slot runs.
fn exec_args<'a>(flags: &[&'a str], program: &'a [impl AsRef<str>]) -> Vec<&'a str> {
    let mut args = flags.to_vec();
    args.push("--");
    args.extend(program.iter().map(AsRef::as_ref));
    args
}

/// The server running `program` in every slot, with `flags` before `--`.
fn exec_server(flags: &[&str], program: &[impl AsRef<str>]) -> Server {
    Server::start(&exec_args(flags, program))
}

/// Runs the server with `flags -- program` and checks that it does not start:
/// exit 1, with `expected` in what it printed (returned, for more checks).
fn start_fails(flags: &[&str], program: &[impl AsRef<str>], expected: &str) -> String {
    let command = command(server_binary(), &exec_args(flags, program));
    let (status, _, err) = run_to_exit(command, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains(expected), "{err}");
    err
}

/// HUP, then waits until the `n`-th reload is complete.
fn reload(server: &Server, n: usize) {
    server.signal(Signal::SIGHUP);
    server.wait_for_log_count("reload complete", n, Duration::from_secs(30));
}

/// Distinct worker pids seen over `tries` fresh connections.
fn pids_answering(server: &Server, tries: usize) -> HashSet<Pid> {
    (0..tries).filter_map(|_| try_worker_pid(server.addr)).collect()
}

#[test]
fn the_python_and_node_examples_serve_from_every_worker() {
    for program in [vec!["python3", &script("hello.py")], vec!["node", &script("hello.js")]] {
        let server = exec_server(&["--workers", "2"], &program);
        let workers: HashSet<Pid> = server.wait_for_workers(2, Duration::from_secs(5)).into_iter().collect();
        let seen = eventually(Duration::from_secs(10), "both workers answer", || {
            let seen = pids_answering(&server, 20);
            (seen.len() == 2).then_some(seen)
        });
        assert_eq!(
            seen, workers,
            "{program:?}: the answers come from the master's children"
        );
    }
}

/// sd_notify in a few lines of Python, for the programs the tests write
/// inline. (Their signal handlers leave with `os._exit`: a `SystemExit` raised
/// by a handler that happens to run inside a finalizer is swallowed.)
const NOTIFY: &str = "import os, socket, time, signal\n\
def notify(message):\n    \
    address = os.environ['NOTIFY_SOCKET']\n    \
    address = '\\0' + address[1:] if address.startswith('@') else address\n    \
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:\n        \
        sock.sendto(message.encode(), address)\n";

/// `python3 -c` of [`NOTIFY`] followed by `code`.
fn python(code: &str) -> Vec<String> {
    vec!["python3".into(), "-c".into(), format!("{NOTIFY}{code}")]
}

#[test]
fn a_killed_worker_is_replaced_by_a_new_one_that_serves() {
    let server = exec_server(&["--workers", "2"], &["python3", &script("hello.py")]);
    let before = server.wait_for_workers(2, Duration::from_secs(5));
    nix::sys::signal::kill(before[0], Signal::SIGKILL).unwrap();
    server.wait_for_log("killed by SIGKILL", Duration::from_secs(5));
    let after: HashSet<Pid> = eventually(Duration::from_secs(10), "a replacement", || {
        let now: HashSet<Pid> = server.workers().into_iter().collect();
        (now.len() == 2 && !now.contains(&before[0]) && server.zombies().is_empty()).then_some(now)
    });
    let replacement = *after.iter().find(|pid| **pid != before[1]).unwrap();
    eventually(Duration::from_secs(10), "the replacement answers", || {
        pids_answering(&server, 10).contains(&replacement).then_some(())
    });
}

/// Rolling reloads of commands under keep-alive load: each new worker is ready
/// before the old one is told to stop, and the old one finishes what it was
/// answering; no request fails, and every worker is replaced each time.
#[test]
fn five_reloads_of_commands_under_keep_alive_load_lose_nothing() {
    for program in [vec!["python3", &script("hello.py")], vec!["node", &script("hello.js")]] {
        let server = exec_server(&["--workers", "2", "--graceful-timeout", "10s"], &program);
        let mut previous: HashSet<Pid> = server.wait_for_workers(2, Duration::from_secs(5)).into_iter().collect();
        let load = Load::start(server.addr, 16);
        load.wait_for_traffic(300);
        for n in 1..=5 {
            reload(&server, n);
            load.wait_for_traffic(200);
            let now: HashSet<Pid> = eventually(Duration::from_secs(15), "the old workers gone", || {
                let now: HashSet<Pid> = server.workers().into_iter().collect();
                (now.len() == 2 && server.zombies().is_empty()).then_some(now)
            });
            assert!(now.is_disjoint(&previous), "{program:?}: reload {n} replaced every pid");
            previous = now;
        }
        load.finish().assert_clean(&format!("{program:?}"), 1000);
    }
}

/// `--timeout` holds a command to its `WATCHDOG=1` once it has sent one: one
/// that stops beating is killed (SIGABRT, then SIGKILL) and replaced.
#[test]
fn a_command_that_stops_beating_is_killed_after_the_timeout() {
    let program = python(
        "assert int(os.environ['WATCHDOG_USEC']) == 2_000_000\n\
         notify('READY=1')\n\
         for _ in range(3):\n    notify('WATCHDOG=1'); time.sleep(0.5)\n\
         signal.signal(signal.SIGABRT, signal.SIG_IGN)\n\
         time.sleep(3600)\n",
    );
    let server = exec_server(
        &["--exec-ready", "notify", "--workers", "1", "--timeout", "2s"],
        &program,
    );
    let first = server.wait_for_workers(1, Duration::from_secs(5))[0];
    let line = server.wait_for_log("timed out after 2.0s", Duration::from_secs(10));
    assert!(line.contains(&format!("(pid {first})")), "{line}");
    server.wait_for_log(&format!("(pid {first}) killed by SIGKILL"), Duration::from_secs(5));
    eventually(Duration::from_secs(10), "a replacement", || {
        let now = server.workers();
        (now.len() == 1 && now[0] != first).then_some(())
    });
}

/// A command that never beats is never judged by `--timeout`: it did not ask.
#[test]
fn a_command_that_never_beats_is_not_timed_out() {
    let program = python("notify('READY=1')\ntime.sleep(3600)\n");
    let server = exec_server(
        &["--exec-ready", "notify", "--workers", "1", "--timeout", "1s"],
        &program,
    );
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    // Three timeouts' worth, at the master's pace (checks every 250 ms).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(server.workers(), [worker], "{}", server.logs());
    assert!(!server.logs().contains("timed out"));
}

#[test]
fn a_command_that_does_not_exist_stops_the_start_with_exit_1() {
    start_fails(
        &["--workers", "1"],
        &["no-such-program-here", "x"],
        "cannot run the command: `no-such-program-here` is not found in PATH",
    );
}

/// A command that exits at once is a boot failure: backoff, then the first
/// generation halts with its cause (exit 1).
#[test]
fn a_command_that_exits_at_once_halts_the_start_with_its_cause() {
    let err = start_fails(
        &["--workers", "1"],
        &["python3", "-c", "raise SystemExit(4)"],
        "every worker failed to boot",
    );
    assert!(
        err.contains("`python3 -c raise SystemExit(4)` exited with code 4 before it was ready"),
        "{err}"
    );
}

/// `--exec-ready notify`: a command that never says `READY=1` is not ready at
/// `--ready-timeout`, a boot failure.
#[test]
fn a_command_that_never_says_ready_is_a_boot_failure() {
    start_fails(
        &["--workers", "1", "--exec-ready", "notify", "--ready-timeout", "1s"],
        &["sleep", "60"],
        "not ready within 1.0s (--ready-timeout): it did not say READY=1 on NOTIFY_SOCKET",
    );
}

/// PDEATHSIG: when the master is killed outright, every command goes with it.
#[test]
fn every_command_dies_with_a_killed_master() {
    let server = exec_server(&["--workers", "3"], &["python3", &script("hello.py")]);
    let workers = server.wait_for_workers(3, Duration::from_secs(5));
    server.signal(Signal::SIGKILL);
    eventually(Duration::from_secs(2), "every worker gone within 2 s", || {
        workers.iter().all(|pid| !alive(*pid)).then_some(())
    });
}

/// What a command starts runs in its process group, which the master kills
/// once the command has exited: a stop leaves nothing behind.
#[test]
fn a_commands_own_children_are_gone_after_a_stop() {
    let marker = format!("{}.25", 3000 + std::process::id() % 1000);
    let program = python(&format!(
        "import subprocess\nsubprocess.Popen(['sleep', '{marker}'])\n\
         signal.signal(signal.SIGTERM, lambda *_: (notify('STOPPING=1'), os._exit(0)))\nnotify('READY=1')\n\
         time.sleep(3600)\n"
    ));
    let mut server = exec_server(&["--exec-ready", "notify", "--workers", "2"], &program);
    let sleeps = || sleeping(&marker);
    eventually(Duration::from_secs(5), "both grandchildren started", || {
        (sleeps().len() == 2).then_some(())
    });
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    eventually(Duration::from_secs(2), "no grandchild left", || {
        sleeps().is_empty().then_some(())
    });
}

/// `--stop-signal`: the signal a command is asked to stop with.
#[test]
fn the_stop_signal_is_the_one_asked_for() {
    let program = python(
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         signal.signal(signal.SIGINT, lambda *_: os._exit(0))\n\
         notify('READY=1')\n\
         time.sleep(3600)\n",
    );
    let mut server = exec_server(
        &["--exec-ready", "notify", "--workers", "1", "--stop-signal", "INT"],
        &program,
    );
    server.wait_for_workers(1, Duration::from_secs(5));
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(5)).success());
    assert!(server.logs().contains("exited with code 0"), "{}", server.logs());
}

/// The admin views in exec mode come from an admin process of the master's:
/// each command's pid, state and `STATUS=` text, and readiness.
#[test]
fn the_admin_views_show_each_command() {
    let server = exec_server(
        &["--workers", "2", "--admin", "127.0.0.1:0"],
        &["python3", &script("hello.py")],
    );
    let admin = server.admin_addr();
    let status = eventually(
        Duration::from_secs(10),
        "/status lists 2 ready workers with a status",
        || {
            let body = get(admin, "/status").ok()?.body;
            let status: serde_json::Value = serde_json::from_str(&body).ok()?;
            let slots = status["slots"].as_array()?;
            let ready = |w: &serde_json::Value| {
                w["state"] == "ready" && w["status"].as_str().is_some_and(|text| text.starts_with("serving on"))
            };
            (slots.len() == 2 && slots.iter().all(ready)).then_some(status.clone())
        },
    );
    let pids: HashSet<u64> = status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    let answering: HashSet<u64> = pids_answering(&server, 20)
        .into_iter()
        .map(|p| p.as_raw() as u64)
        .collect();
    assert!(answering.is_subset(&pids), "{answering:?} {pids:?}");
    assert_eq!(get(admin, "/readyz").unwrap().status, 200);
}

/// A third-party server as the worker: gunicorn, which takes the socket from
/// `LISTEN_FDS` and says `READY=1` itself, one gunicorn (arbiter and one
/// worker) per slot, reloaded twice under load with no failed request.
#[test]
fn gunicorn_serves_under_the_master_and_reloads_under_load_losing_nothing() {
    crate::frameworks::require("gunicorn", "pip install gunicorn");
    let chdir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/exec");
    let chdir = chdir.to_string_lossy();
    let server = exec_server(
        &["--workers", "2", "--graceful-timeout", "10s"],
        &["gunicorn", "--workers", "1", "--chdir", &chdir, "wsgi_hello:app"],
    );
    let load = Load::start(server.addr, 8);
    load.wait_for_traffic(300);
    for n in 1..=2 {
        reload(&server, n);
        load.wait_for_traffic(200);
    }
    load.finish().assert_clean("gunicorn", 500);
}

/// TTIN and TTOU add and remove commands like workers.
#[test]
fn ttin_and_ttou_scale_the_commands() {
    let server = exec_server(&["--workers", "1"], &["python3", &script("hello.py")]);
    server.wait_for_workers(1, Duration::from_secs(5));
    server.signal(Signal::SIGTTIN);
    server.wait_for_workers(2, Duration::from_secs(10));
    let seen = eventually(Duration::from_secs(10), "both answer", || {
        let seen = pids_answering(&server, 20);
        (seen.len() == 2).then_some(seen)
    });
    server.signal(Signal::SIGTTOU);
    let left = server.wait_for_workers(1, Duration::from_secs(10));
    assert!(seen.contains(&left[0]));
}

/// `--max-worker-memory`: a command that grows past it is replaced (the new
/// one ready first); one already over it at boot is left alone (a new one
/// would be as big).
#[test]
fn a_command_over_the_memory_limit_is_recycled() {
    let program = python(
        "signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n\
         notify('READY=1')\n\
         time.sleep(1.5)\n\
         grown = bytearray(64 << 20)\n\
         for i in range(0, len(grown), 4096): grown[i] = 1\n\
         time.sleep(3600)\n",
    );
    let server = exec_server(
        &[
            "--exec-ready",
            "notify",
            "--workers",
            "1",
            "--max-worker-memory",
            "48MiB",
        ],
        &program,
    );
    let first = server.wait_for_workers(1, Duration::from_secs(5))[0];
    let line = server.wait_for_log("over --max-worker-memory 48 MiB: recycling it", Duration::from_secs(10));
    assert!(line.contains(&format!("(pid {first})")), "{line}");
    server.wait_for_log(&format!("(pid {first}) exited with code 0"), Duration::from_secs(10));
}

/// The command can come from the config file (`command = [...]`), and a HUP
/// re-reads it: the next workers run the new one.
#[test]
fn a_reload_runs_the_command_the_config_file_names_now() {
    let dir = std::env::temp_dir().join(format!("prefork-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prefork.toml");
    let write = |program: &str, script_name: &str| {
        let text = format!("workers = 1\ncommand = [\"{program}\", \"{}\"]\n", script(script_name));
        std::fs::write(&file, text).unwrap();
    };
    write("python3", "hello.py");
    let server = Server::start(&["--config", file.to_str().unwrap()]);
    let comm = |pid: Pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let first = server.wait_for_workers(1, Duration::from_secs(5))[0];
    assert!(comm(first).starts_with("python"), "{}", comm(first));
    write("node", "hello.js");
    reload(&server, 1);
    let now = server.wait_for_workers(1, Duration::from_secs(10))[0];
    assert_eq!(comm(now).trim(), "node");
    assert_eq!(try_worker_pid(server.addr), Some(now));
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a command gets, and nothing more: fds 0–3 (3 the slot's listening
/// socket), an empty signal mask, no ignored signal, a process group of its
/// own, systemd's socket-activation variables, and the workers' user.
#[test]
fn a_command_gets_its_socket_on_fd_3_and_nothing_else_of_the_master() {
    let server = exec_server(
        &["--workers", "1", "--exec-ready", "exec", "--user", "nobody"],
        &["sleep", "60"],
    );
    let pid = server.wait_for_workers(1, Duration::from_secs(5))[0];
    // `sleep` may hold a file open for a moment as it starts (its locale).
    let fds = || -> Vec<String> {
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        fds.sort();
        fds
    };
    eventually(Duration::from_secs(2), "fds 0 to 3 only", || {
        (fds() == ["0", "1", "2", "3"]).then_some(())
    });
    let socket = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
    assert!(socket.to_string_lossy().starts_with("socket:["), "{socket:?}");
    let inode = socket
        .to_string_lossy()
        .trim_start_matches("socket:[")
        .trim_end_matches(']')
        .to_owned();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap() + &std::fs::read_to_string("/proc/net/tcp6").unwrap();
    let port = format!(":{:04X} ", server.addr.port());
    assert!(
        tcp.lines()
            .any(|line| line.contains(&port) && line.split_whitespace().nth(9) == Some(inode.as_str())),
        "fd 3 is the socket listening on {}",
        server.addr
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    assert_eq!(field("SigBlk:"), "0000000000000000");
    assert_eq!(field("SigIgn:"), "0000000000000000");
    assert!(field("Uid:").starts_with("65534"), "runs as nobody: {}", field("Uid:"));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let pgrp = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    assert_eq!(pgrp, pid.to_string(), "it leads its own process group");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ: Vec<String> = environ
        .split(|byte| *byte == 0)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect();
    for expected in [
        "LISTEN_FDS=1".to_string(),
        format!("LISTEN_PID={pid}"),
        "LISTEN_FDNAMES=http".into(),
        "PREFORK_SLOT=0".into(),
        "PREFORK_GENERATION=1".into(),
    ] {
        assert!(environ.contains(&expected), "{expected} in {environ:?}");
    }
    let prefix = format!("NOTIFY_SOCKET=@prefork-server/{}/notify-", server.master);
    let notify = environ.iter().find_map(|pair| pair.strip_prefix(&prefix));
    assert!(
        notify.is_some_and(|random| random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit())),
        "{prefix}<32 hex digits> in {environ:?}"
    );
}

/// The master believes only the worker itself (`SO_PASSCRED`): a `READY=1`
/// from a process the command started does not make the worker ready.
#[test]
fn only_the_command_itself_can_say_it_is_ready() {
    let program = python(
        "if os.fork() == 0:\n    notify('READY=1')\n    os._exit(0)\n\
         os.wait()\ntime.sleep(60)\n",
    );
    start_fails(
        &["--workers", "1", "--exec-ready", "notify", "--ready-timeout", "1s"],
        &program,
        "not ready within 1.0s (--ready-timeout)",
    );
}

/// A command that ignores the stop signal is killed, with its process group,
/// at `--graceful-timeout`.
#[test]
fn a_command_that_ignores_the_stop_signal_is_killed_at_the_graceful_timeout() {
    let program = python("signal.signal(signal.SIGTERM, signal.SIG_IGN)\nnotify('READY=1')\ntime.sleep(3600)\n");
    let mut server = exec_server(
        &["--exec-ready", "notify", "--workers", "1", "--graceful-timeout", "1s"],
        &program,
    );
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert!(
        server.logs().contains(&format!("(pid {worker}) killed by SIGKILL")),
        "{}",
        server.logs()
    );
}

/// A hot upgrade (USR2) starts the new master's commands on the same sockets,
/// and the old master's commands stop.
#[test]
fn a_hot_upgrade_runs_the_command_under_the_new_master() {
    let mut server = exec_server(&["--workers", "2"], &["python3", &script("hello.py")]);
    let old: HashSet<Pid> = server.wait_for_workers(2, Duration::from_secs(5)).into_iter().collect();
    server.signal(Signal::SIGUSR2);
    server.follow_upgrade(Duration::from_secs(30));
    let new: HashSet<Pid> = server
        .wait_for_workers(2, Duration::from_secs(10))
        .into_iter()
        .collect();
    assert!(new.is_disjoint(&old));
    eventually(Duration::from_secs(10), "the old commands gone", || {
        old.iter().all(|pid| !alive(*pid)).then_some(())
    });
    let answering = pids_answering(&server, 10);
    assert!(
        !answering.is_empty() && answering.is_subset(&new),
        "{answering:?} {new:?}"
    );
}

/// `--max-worker-memory` counts what a command started as well (gunicorn's
/// workers are its arbiter's children): a child that grows past it gets the
/// command recycled.
#[test]
fn a_commands_children_count_toward_the_memory_limit() {
    let program = python(
        "signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n\
         if os.fork() == 0:\n    \
             time.sleep(1.5)\n    \
             grown = bytearray(64 << 20)\n    \
             for i in range(0, len(grown), 4096): grown[i] = 1\n    \
             time.sleep(3600)\n\
         notify('READY=1')\n\
         time.sleep(3600)\n",
    );
    let server = exec_server(
        &[
            "--exec-ready",
            "notify",
            "--workers",
            "1",
            "--max-worker-memory",
            "48MiB",
        ],
        &program,
    );
    let first = server.wait_for_workers(1, Duration::from_secs(5))[0];
    let line = server.wait_for_log("over --max-worker-memory 48 MiB: recycling it", Duration::from_secs(10));
    assert!(line.contains(&format!("(pid {first})")), "{line}");
}

/// A program that ignores fd 3 and binds a port of its own is never seen
/// accepting: a boot failure that says what to look at.
#[test]
fn a_command_that_binds_its_own_port_is_told_to_use_fd_3() {
    start_fails(
        &["--workers", "1", "--ready-timeout", "1s"],
        &["python3", "-m", "http.server", "--bind", "127.0.0.1", "0"],
        "it never waited for connections on its socket, fd 3",
    );
}

/// `/status` shows a command's memory as `--max-worker-memory` counts it:
/// with what it started.
#[test]
fn status_counts_a_commands_children_in_its_memory() {
    let program = python(
        "if os.fork() == 0:\n    \
             grown = bytearray(64 << 20)\n    \
             for i in range(0, len(grown), 4096): grown[i] = 1\n    \
             time.sleep(3600)\n\
         notify('READY=1')\n\
         time.sleep(3600)\n",
    );
    let server = exec_server(
        &["--exec-ready", "notify", "--workers", "1", "--admin", "127.0.0.1:0"],
        &program,
    );
    let admin = server.admin_addr();
    eventually(
        Duration::from_secs(10),
        "/status shows over 64 MiB for the worker",
        || {
            let status: serde_json::Value = serde_json::from_str(&get(admin, "/status").ok()?.body).ok()?;
            (status["slots"][0]["rss_bytes"].as_u64()? > 64 << 20).then_some(())
        },
    );
}

/// The Rust app's HTTP settings do nothing for a command, which serves HTTP
/// itself: each one given is named in a warning, and the command still runs.
#[test]
fn http_settings_given_with_a_command_are_named_as_ignored() {
    let server = exec_server(
        &["--workers", "1", "--max-requests", "100", "--max-body-size", "1m"],
        &["python3", &script("hello.py")],
    );
    for flag in ["--max-requests", "--max-body-size"] {
        server.wait_for_log(
            &format!("{flag} does not apply to a command, which serves HTTP itself; ignored"),
            Duration::from_secs(5),
        );
    }
    assert!(try_worker_pid(server.addr).is_some());
}

/// Processes whose command line is `sleep <marker>` (what a test's command started).
fn sleeping(marker: &str) -> Vec<Pid> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline == format!("sleep\0{marker}\0").as_bytes())
        })
        .map(Pid::from_raw)
        .collect()
}

/// Parent pid and session of `pid`, from /proc/<pid>/stat.
fn parent_and_session(pid: Pid) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// A daemon (double fork and `setsid`: out of the command's process group and
/// session) comes back to the master, which ends it when its command exits: a
/// respawn does not add one, and a stop leaves none.
/// One worker whose command starts `sleep <marker>` as a daemon through
/// `launcher` (`setsid --fork`, say) and then serves: the server, the daemon
/// and the command (the master's two children).
fn server_with_a_daemon(marker: &str, launcher: &str) -> (Server, Pid, Pid) {
    let program = python(&format!(
        "import subprocess\nsubprocess.run([{launcher}, 'sleep', '{marker}'], check=True)\n\
         signal.signal(signal.SIGTERM, lambda *_: (notify('STOPPING=1'), os._exit(0)))\nnotify('READY=1')\n\
         time.sleep(3600)\n"
    ));
    let server = exec_server(&["--exec-ready", "notify", "--workers", "1"], &program);
    let daemon = eventually(Duration::from_secs(5), "the daemon started", || {
        sleeping(marker).first().copied()
    });
    let children = server.wait_for_workers(2, Duration::from_secs(5));
    let command = *children.iter().find(|pid| **pid != daemon).unwrap();
    (server, daemon, command)
}

#[test]
fn a_daemon_a_command_leaves_goes_with_it() {
    let marker = format!("{}.75", 3000 + std::process::id() % 1000);
    let (mut server, first, command) = server_with_a_daemon(&marker, "'setsid', '--fork'");
    let (parent, session) = parent_and_session(first).expect("the daemon's stat");
    assert_eq!(
        parent,
        server.master.as_raw(),
        "the orphaned daemon is the master's child"
    );
    assert_ne!(session, command.as_raw(), "it left the command's session and group");
    nix::sys::signal::kill(command, Signal::SIGKILL).unwrap();
    let second = eventually(
        Duration::from_secs(10),
        "the first daemon gone, the new command's running",
        || {
            let now = sleeping(&marker);
            (now.len() == 1 && now[0] != first).then(|| now[0])
        },
    );
    server.wait_for_log("left behind by the command pid", Duration::from_secs(5));
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    eventually(Duration::from_secs(2), "no daemon left after the stop", || {
        sleeping(&marker).is_empty().then_some(())
    });
    assert!(!alive(second));
}

/// The notify socket's name cannot be taken ahead of the master: with the
/// names a pid alone would give (`@prefork-server/<pid>/notify`) bound for the
/// next 2,000 pids (the abstract namespace has no permissions: any user can),
/// exec mode starts and its commands say `READY=1`.
#[test]
fn exec_mode_starts_while_the_pid_names_of_the_notify_socket_are_taken() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The next 2,000 pids, wrapping at pid_max (to 300: the kernel's first
    // pids are reserved).
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let taken: Vec<i32> = (1..=2000)
        .map(|n| {
            let pid = last + n;
            if pid >= max {
                300 + (pid - max)
            } else {
                pid
            }
        })
        .collect();
    let squatters: Vec<UnixDatagram> = taken
        .iter()
        .filter_map(|pid| {
            let name = format!("prefork-server/{pid}/notify");
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name).ok()?).ok()
        })
        .collect();
    assert_eq!(squatters.len(), 2000);
    let server = exec_server(
        &["--workers", "2", "--exec-ready", "notify"],
        &["python3", &script("hello.py")],
    );
    assert!(
        taken.contains(&server.master.as_raw()),
        "the master's pid {} was among those taken",
        server.master
    );
    assert_eq!(pids_answering(&server, 10).len(), 2, "both commands serve");
}

/// A daemon whose environment was cleared (`env -i`) cannot be told from
/// whose command it came: it outlives its command, and ends with the master.
#[test]
fn a_daemon_without_its_environment_ends_with_the_master() {
    let marker = format!("{}.85", 3000 + std::process::id() % 1000);
    let (mut server, first, command) = server_with_a_daemon(&marker, "'env', '-i', 'setsid', '--fork'");
    nix::sys::signal::kill(command, Signal::SIGKILL).unwrap();
    eventually(
        Duration::from_secs(10),
        "the new command's daemon beside the first",
        || (sleeping(&marker).len() == 2).then_some(()),
    );
    assert!(alive(first), "not attributed: it outlives its command");
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    server.wait_for_log("killed as the master exits", Duration::from_secs(2));
    eventually(Duration::from_secs(2), "no daemon left after the stop", || {
        sleeping(&marker).is_empty().then_some(())
    });
}

/// A socket-activated program in its plainest form: `socket.socket(fileno=3)`
/// and a blocking `accept()` loop. With `draining`, it waits in `select` (0.1 s
/// at a time) before each `accept`, to exit between connections once asked
/// to stop; with `nonblocking`, it expects a non-blocking socket. Each answer
/// tells how fd 3 was handed over: `nonblocking=`, `nodelay=` (the listening
/// socket) and `accepted_nodelay=` (the connection, which Linux copies it to).
fn socket_reporter(draining: bool, nonblocking: bool) -> Vec<String> {
    let wait = match (draining, nonblocking) {
        (true, _) => "    if stop: os._exit(0)\n    if not select.select([s], [], [], 0.1)[0]: continue\n",
        (false, true) => "    select.select([s], [], [])\n",
        (false, false) => "",
    };
    let code = format!(
        "import fcntl, os, select, signal, socket\n\
         stop = False\n\
         def on_term(*_):\n    global stop\n    stop = True\n\
         if {draining}: signal.signal(signal.SIGTERM, on_term)\n\
         s = socket.socket(fileno=3)\n\
         while True:\n{wait}    try:\n        conn, _ = s.accept()\n\
         \x20   except BlockingIOError:\n        if {nonblocking}: continue\n        raise\n\
         \x20   with conn:\n        head = b''\n        while b'\\r\\n\\r\\n' not in head and (part := conn.recv(65536)): head += part\n\
         \x20       nb = bool(fcntl.fcntl(3, fcntl.F_GETFL) & os.O_NONBLOCK)\n\
         \x20       nd = bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))\n\
         \x20       ad = bool(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))\n\
         \x20       body = f'pid={{os.getpid()}} nonblocking={{nb}} nodelay={{nd}} accepted_nodelay={{ad}}\\n'.encode()\n\
         \x20       conn.sendall(b'HTTP/1.1 200 OK\\r\\nX-Worker-Pid: %d\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n' % (os.getpid(), len(body)) + body)\n",
        draining = if draining { "True" } else { "False" },
        nonblocking = if nonblocking { "True" } else { "False" },
    );
    vec!["python3".into(), "-c".into(), code]
}

/// Whether fd 3 of `pid` is non-blocking, from `/proc/<pid>/fdinfo/3`
/// (`flags:` in octal; `O_NONBLOCK` is 04000).
fn fd3_nonblocking(pid: Pid) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
    let flags = info
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .unwrap()
        .trim();
    u32::from_str_radix(flags, 8).unwrap() & 0o4000 != 0
}

/// fd 3 comes as systemd hands it by default (`NonBlocking=false`,
/// `NoDelay=true`): blocking, so a plain `accept()` loop serves, and with
/// `TCP_NODELAY`, which every accepted connection gets too.
#[test]
fn a_command_gets_its_socket_blocking_and_with_tcp_nodelay() {
    let server = exec_server(&["--workers", "2"], &socket_reporter(false, false));
    server.wait_for_workers(2, Duration::from_secs(10));
    for _ in 0..4 {
        let body = get(server.addr, "/").unwrap().body;
        assert!(
            body.contains("nonblocking=False nodelay=True accepted_nodelay=True"),
            "{body}"
        );
    }
    // Each spawn sets it again: so does a reload's.
    reload(&server, 1);
    let body = get(server.addr, "/").unwrap().body;
    assert!(body.contains("nonblocking=False nodelay=True"), "{body}");
    assert!(!server.logs().contains("BlockingIOError"), "{}", server.logs());
}

/// `--exec-nonblocking` and `--exec-nodelay false` (`NonBlocking=true`,
/// `NoDelay=false`).
#[test]
fn the_socket_mode_of_commands_can_be_changed() {
    let server = exec_server(
        &["--workers", "1", "--exec-nonblocking", "--exec-nodelay", "false"],
        &socket_reporter(false, true),
    );
    server.wait_for_workers(1, Duration::from_secs(10));
    let body = get(server.addr, "/").unwrap().body;
    assert!(
        body.contains("nonblocking=True nodelay=False accepted_nodelay=False"),
        "{body}"
    );
}

/// The blocking mode lives on the open file that both masters and all their
/// commands share: a new master after USR2 leaves it as the old commands
/// need it while they still serve (a plain `accept()` loop dies of
/// `BlockingIOError` otherwise), and its own commands get it too.
#[test]
fn the_blocking_socket_of_commands_survives_a_hot_upgrade() {
    let mut server = exec_server(&["--workers", "2"], &socket_reporter(true, false));
    let old: Vec<Pid> = server.wait_for_workers(2, Duration::from_secs(10));
    let load = Load::start(server.addr, 4);
    load.wait_for_traffic(50);
    server.signal(Signal::SIGUSR2);
    // The new master has taken the sockets over and spawns its commands
    // while the old ones still serve.
    server.wait_for_log_count("spawned", 3, Duration::from_secs(10));
    for pid in &old {
        assert!(
            !fd3_nonblocking(*pid),
            "fd 3 of the old command {pid} was made non-blocking under it"
        );
    }
    server.follow_upgrade(Duration::from_secs(30));
    eventually(Duration::from_secs(10), "the old commands gone", || {
        old.iter().all(|pid| !alive(*pid)).then_some(())
    });
    load.wait_for_traffic(50);
    load.finish().assert_clean("keep-alive load across the upgrade", 100);
    let body = get(server.addr, "/").unwrap().body;
    assert!(body.contains("nonblocking=False nodelay=True"), "{body}");
    let logs = server.logs();
    assert!(
        !logs.contains("BlockingIOError") && !logs.contains("exited with code 1"),
        "{logs}"
    );
}

/// A command the master asked to stop, dead by that very signal (a program
/// that leaves SIGTERM at its default action), did as asked: the log says so
/// at info, and `/status` does not show it as a failure.
#[test]
fn a_command_stopped_by_the_signal_it_was_asked_to_stop_with_is_no_failure() {
    let server = exec_server(
        &["--workers", "1", "--admin", "127.0.0.1:0"],
        &socket_reporter(false, false),
    );
    // (The admin process is a child of the master too: the command is the one
    // the ready line names.)
    let old = pid_in(&server.wait_for_log("worker 0 (pid", Duration::from_secs(10))).unwrap();
    reload(&server, 1);
    let line = server.wait_for_log(
        &format!("(pid {old}) stopped by SIGTERM (as asked)"),
        Duration::from_secs(10),
    );
    assert!(line.contains(" INFO "), "{line}");
    assert!(
        !server.logs().contains(&format!("(pid {old}) killed by")),
        "{}",
        server.logs()
    );
    let status: serde_json::Value = serde_json::from_str(&get(server.admin_addr(), "/status").unwrap().body).unwrap();
    assert_eq!(
        status["slots"][0]["last_exit"], "stopped by SIGTERM (as asked)",
        "{status:#}"
    );
}

/// An event loop sets `O_NONBLOCK` on the socket itself, on the open file it
/// shares with the command that replaces it: a reload must not make it
/// blocking under the old command while the new one boots (asyncio's accept
/// loop would then block, and the old command stall with every client it has).
#[test]
fn a_reload_leaves_the_socket_as_the_running_command_set_it() {
    let program = vec![
        "python3".to_string(),
        "-c".into(),
        "import asyncio, os, socket, time\n\
         time.sleep(1)  # a boot that takes a moment\n\
         async def answer(reader, writer):\n\
         \x20   await reader.readuntil(b'\\r\\n\\r\\n')\n\
         \x20   body = f'Hello from worker {os.getpid()}\\n'.encode()\n\
         \x20   writer.write(b'HTTP/1.1 200 OK\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body) + body)\n\
         \x20   await writer.drain()\n\
         \x20   writer.close()\n\
         async def main():\n\
         \x20   server = await asyncio.start_server(answer, sock=socket.socket(fileno=3))\n\
         \x20   await server.serve_forever()\n\
         asyncio.run(main())\n"
            .into(),
    ];
    let server = exec_server(&["--workers", "1"], &program);
    let old = server.wait_for_workers(1, Duration::from_secs(10))[0];
    eventually(Duration::from_secs(5), "asyncio made the socket non-blocking", || {
        fd3_nonblocking(old).then_some(())
    });
    server.signal(Signal::SIGHUP);
    server.wait_for_log("spawned (generation 2)", Duration::from_secs(5));
    // The new command sleeps a second before it takes the socket: meanwhile
    // the old one serves, on the socket as it set it.
    assert!(
        fd3_nonblocking(old),
        "the reload made the socket blocking under the running command"
    );
    for _ in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(get(server.addr, "/").unwrap().status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    server.wait_for_log_count("reload complete", 1, Duration::from_secs(30));
}

/// A master that may not look at its commands in `/proc` (root without
/// `CAP_SYS_PTRACE`, as in a container with Docker's default capabilities,
/// running the commands as another user) cannot see them accept: it says so
/// once, and counts their `READY=1` instead.
#[test]
fn a_master_that_may_not_read_proc_counts_ready_1() {
    let binary = server_binary();
    let hello = script("hello.py");
    let args = [
        "--bounding-set",
        "-sys_ptrace",
        "--inh-caps",
        "-sys_ptrace",
        binary.to_str().unwrap(),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "2",
        "--user",
        "nobody",
        "--",
        "python3",
        &hello,
    ];
    let server = Server::start_command(bare_command(PathBuf::from("setpriv"), &args));
    server.wait_for_log("cannot look at /proc/", Duration::from_secs(5));
    assert_eq!(get(server.addr, "/").unwrap().status, 200);
    assert!(!server.logs().contains("not ready within"), "{}", server.logs());
}
