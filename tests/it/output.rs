//! The master's own output: a stdout that closes, or a stderr whose reader
//! stalls, neither kills the master nor holds up supervision.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};

use crate::util::*;

/// A port nobody listens on now (bound, read, released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `prefork-server --config F | head -1`, then the port changes and a HUP: the
/// master's next ready line has nowhere to go, and the master lives on, on the
/// new port.
#[test]
fn a_closed_stdout_does_not_stop_the_master() {
    let dir = tempdir("closed-stdout");
    let config = dir.join("prefork.toml");
    std::fs::write(&config, "host = \"127.0.0.1\"\nport = 0\nworkers = 1\n").unwrap();
    let server = Server::start_closing_stdout(bare_command(server_binary(), &["--config", config.to_str().unwrap()]));
    let port = free_port();
    std::fs::write(&config, format!("host = \"127.0.0.1\"\nport = {port}\nworkers = 1\n")).unwrap();
    server.signal(Signal::SIGHUP);
    server.wait_for_log("reload complete", Duration::from_secs(20));
    server.wait_for_log("stdout is closed", Duration::from_secs(5));
    let moved: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let response = eventually(Duration::from_secs(10), "an answer on the new port", || {
        get(moved, "/").ok()
    });
    assert_eq!(response.status, 200);
    // And once more: the master stays up through every later ready line.
    server.signal(Signal::SIGHUP);
    server.wait_for_log_count("reload complete", 2, Duration::from_secs(20));
    assert!(alive(server.master), "the master is alive:\n{}", server.logs());
    assert_eq!(get(moved, "/").expect("served").status, 200);
}

/// With stderr's reader stalled (the pipe full), a worker killed with SIGKILL
/// is replaced while the reader is still stalled: the master's exit line does
/// not wait for it. The lines it could not write are counted in the log once
/// the reader reads again.
#[test]
fn a_stalled_stderr_does_not_hold_up_a_respawn() {
    respawn_with_stderr_stalled(&[]);
}

/// The same where the master may not open the pipe again (it belongs to
/// another user, as in a container with a `USER` or under `sudo -u`): the
/// master runs as nobody, the pipe is root's.
#[test]
fn a_stalled_stderr_of_another_user_does_not_hold_up_a_respawn() {
    respawn_with_stderr_stalled(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
}

/// Starts the server (through `wrapper`, if any) with a stderr pipe of the
/// test's, fills the pipe, kills a worker and waits for its replacement
/// without reading; then reads, and finds the count of dropped lines.
fn respawn_with_stderr_stalled(wrapper: &[&str]) {
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let args = ["--host", "127.0.0.1", "--port", "0", "--workers", "2"];
    let mut command = match wrapper.split_first() {
        None => bare_command(server_binary(), &args),
        Some((program, flags)) => {
            let mut all: Vec<&str> = flags.to_vec();
            let binary = server_binary();
            all.push(binary.to_str().unwrap());
            all.extend(args);
            bare_command(program.into(), &all)
        }
    };
    command.stderr(Stdio::from(write_end.try_clone().unwrap()));
    let server = Server::start_command(command);
    let mut logs = String::new();
    drain(&read_end, &mut logs);
    // The reader stalls: fill the pipe to the brim, through a description of
    // the test's own (the master's and the workers' stay blocking, as they were
    // given).
    let filler = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", write_end.as_raw_fd()))
        .expect("open the pipe again");
    drop(write_end);
    let mut filled = 0;
    loop {
        match (&filler).write(&[0; 4096]) {
            Ok(n) => filled += n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(err) => panic!("filling the pipe: {err}"),
        }
    }
    assert!(filled > 0);
    let workers = server.wait_for_workers(2, Duration::from_secs(10));
    let killed = workers[0];
    let started = Instant::now();
    kill(killed, Signal::SIGKILL).unwrap();
    let respawned = eventually(Duration::from_secs(5), "a new worker while stderr is full", || {
        let now = server.workers();
        (now.len() == 2 && !now.contains(&killed)).then_some(started.elapsed())
    });
    // Still full: nobody read while the master respawned.
    assert_eq!(
        (&filler).write(&[0]).map_err(|e| e.kind()).unwrap_err(),
        ErrorKind::WouldBlock
    );
    eprintln!("respawned {respawned:?} after the SIGKILL, stderr full ({wrapper:?})");
    // The reader reads again: the master says what it dropped.
    eventually(Duration::from_secs(10), "the count of dropped log lines", || {
        drain(&read_end, &mut logs);
        logs.contains("log lines dropped: stderr did not take them at once")
            .then_some(())
    });
    assert!(try_worker_pid(server.addr).is_some(), "the service answers");
}

/// Reads what the pipe holds now, without waiting.
fn drain(read_end: &OwnedFd, into: &mut String) {
    nix::fcntl::fcntl(read_end, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let mut file = std::fs::File::from(read_end.try_clone().unwrap());
    let mut buf = [0u8; 65536];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => into.push_str(&String::from_utf8_lossy(&buf[..n]).replace('\0', "")),
            Err(err) if err.kind() == ErrorKind::WouldBlock => return,
            Err(err) => panic!("reading stderr: {err}"),
        }
    }
}
