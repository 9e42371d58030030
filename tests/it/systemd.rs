//! systemd integration: sd_notify messages, read from a datagram socket the test
//! creates; socket activation with a socket the test passes as fd 3.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

/// The notify socket systemd would own.
struct Systemd {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Systemd {
    fn new(name: &str) -> Systemd {
        let path = temp_path(&format!("{name}.notify"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Systemd { socket, path }
    }

    /// Waits for a message containing `text`; returns it.
    fn expect(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if message.contains(text) {
                    return message;
                }
                seen.push(message);
            }
        }
        panic!("no notification containing {text:?} within {within:?}; got {seen:?}");
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn sd_notify_reports_ready_reloading_stopping_and_watchdog() {
    let systemd = Systemd::new("notify");
    let mut command = command(server_binary(), &["--workers", "2"]);
    command
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", "400000");
    let mut server = Server::start_command(command);
    let ready = systemd.expect("READY=1", Duration::from_secs(5));
    assert!(ready.contains("STATUS=2 workers serving on 127.0.0.1:"), "{ready}");
    systemd.expect("WATCHDOG=1", Duration::from_secs(2));
    systemd.expect("WATCHDOG=1", Duration::from_secs(2));

    server.signal(Signal::SIGHUP);
    let reloading = systemd.expect("RELOADING=1", Duration::from_secs(5));
    let usec: u64 = reloading
        .split("MONOTONIC_USEC=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(usec > 0, "{reloading}");
    let ready = systemd.expect("READY=1", Duration::from_secs(20));
    assert!(ready.contains("generation 2"), "{ready}");

    server.signal(Signal::SIGTERM);
    systemd.expect("STOPPING=1", Duration::from_secs(5));
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn an_upgrade_tells_systemd_the_new_main_pid() {
    let systemd = Systemd::new("mainpid");
    let mut command = command(server_binary(), &["--workers", "1"]);
    command.env("NOTIFY_SOCKET", &systemd.path);
    let mut server = Server::start_command(command);
    systemd.expect("READY=1", Duration::from_secs(5));
    server.signal(Signal::SIGUSR2);
    let new = server.follow_upgrade(Duration::from_secs(20));
    let message = systemd.expect("MAINPID=", Duration::from_secs(5));
    assert!(message.contains(&format!("MAINPID={new}")), "{message}");
}

#[test]
fn socket_activation_serves_the_socket_systemd_passes() {
    use command_fds::{CommandFdExt, FdMapping};
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    // As systemd does: the socket at fd 3, LISTEN_PID = the server's own pid
    // (`$$` of the shell that execs it), LISTEN_FDS = 1.
    let mut command = std::process::Command::new("sh");
    let script = format!(
        "LISTEN_PID=$$ LISTEN_FDS=1 exec {} --workers 2",
        server_binary().display()
    );
    command.arg("-c").arg(script);
    command
        .fd_mappings(vec![FdMapping {
            parent_fd: socket.into(),
            child_fd: 3,
        }])
        .unwrap();
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let server = Server::start_command(command);
    assert_eq!(server.addr, addr, "it serves the passed socket, bound by the test");
    server.wait_for_log(
        "socket activation: 1 sockets from systemd (shared)",
        Duration::from_secs(5),
    );
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    assert!(workers.contains(&get(addr, "/").unwrap().worker_pid().unwrap()));
}
