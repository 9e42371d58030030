//! The harness: start the real binary on 127.0.0.1 port 0, wait for its ready
//! line, and always reap it (and its workers), even when the test fails.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::eventually;
use super::procfs::{alive, children};

pub const READY_WITHIN: Duration = Duration::from_secs(20);

pub fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_prefork-server"))
}

/// The `fixture` example (the service the tests need).
pub fn example_binary() -> PathBuf {
    example("fixture")
}

/// The example `name`. A full `cargo test` builds every example, but a filtered
/// run (`cargo test --test it`) does not: build it once per test run so a stale
/// copy is never tested (a no-op when it is up to date).
pub fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !built.iter().any(|done| done == name) {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "--example", name]);
        if !cfg!(debug_assertions) {
            cargo.arg("--release");
        }
        let status = cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --example {name} failed");
        built.push(name.to_owned());
    }
    let dir = server_binary()
        .parent()
        .expect("the binary is in a directory")
        .to_path_buf();
    dir.join("examples").join(name)
}

/// A command for `binary` listening on 127.0.0.1:0, plus `args`.
pub fn command(binary: PathBuf, args: &[&str]) -> Command {
    let mut command = bare_command(binary, &["--host", "127.0.0.1", "--port", "0"]);
    command.args(args);
    command
}

/// A command for `binary` with `args` alone (a control command, or settings
/// from a file), its output piped.
pub fn bare_command(binary: PathBuf, args: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command.args(args);
    // The settings come from the test alone, not from the environment it runs in.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("PREFORK_") || name == "PORT" || name == "WEB_CONCURRENCY" {
            command.env_remove(&*name);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A running server. Dropping it sends SIGTERM to the master, waits up to 5 s,
/// then SIGKILLs it, and SIGKILLs any worker it left behind.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub master: Pid,
    logs: Arc<Mutex<Vec<String>>>,
    /// Every line the server printed on stdout (ready lines).
    out: Arc<Mutex<Vec<String>>>,
    exited: Option<ExitStatus>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_command(command(server_binary(), args))
    }

    pub fn start_example(args: &[&str]) -> Server {
        Server::start_command(command(example_binary(), args))
    }

    pub fn start_command(command: Command) -> Server {
        Server::start_reading(command, StdoutReader::Always)
    }

    /// Starts `command`, reads its first ready line, then closes its stdout, as
    /// `prefork-server ... | head -1` does.
    pub fn start_closing_stdout(command: Command) -> Server {
        Server::start_reading(command, StdoutReader::FirstLine)
    }

    fn start_reading(command: Command, reader: StdoutReader) -> Server {
        let (mut server, ready) = Server::launch(command, reader);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = parse_ready_line(&line) {
                        server.addr = addr;
                        return server;
                    }
                }
                Err(_) => panic!("no ready line within {READY_WITHIN:?}; logs:\n{}", server.logs()),
            }
        }
    }

    /// Starts `command` without waiting for its ready line (`addr` is unknown).
    pub fn start_unready(command: Command) -> Server {
        Server::launch(command, StdoutReader::Always).0
    }

    /// Spawns the server; its stdout lines also arrive on the receiver. Its
    /// stderr is collected if it is piped (a test may give it its own).
    fn launch(mut command: Command, reader: StdoutReader) -> (Server, mpsc::Receiver<String>) {
        let mut child = command.spawn().expect("spawn the server");
        let master = Pid::from_raw(child.id() as i32);
        let logs = match child.stderr.take() {
            Some(stderr) => collect_lines(stderr).0,
            None => Arc::default(),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let out = Arc::new(Mutex::new(Vec::new()));
        let out_sink = Arc::clone(&out);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out_sink.lock().unwrap().push(line.clone());
                let _ = ready_tx.send(line);
                if reader == StdoutReader::FirstLine {
                    return; // the pipe's read end closes with the reader
                }
            }
        });
        let server = Server {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            master,
            logs,
            out,
            exited: None,
        };
        (server, ready_rx)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `text`; returns that line.
    pub fn wait_for_log(&self, text: &str, within: Duration) -> String {
        eventually(within, &format!("a log line containing {text:?}"), || {
            self.logs
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.contains(text))
                .cloned()
        })
    }

    /// The first ready line (`prefork-server: listening on ...`).
    pub fn ready_line(&self) -> String {
        let out = self.out.lock().unwrap();
        let line = out.iter().find(|line| line.contains("listening on"));
        line.cloned().expect("a ready line")
    }

    /// The `--admin` address, from the ready line (`..., admin on ADDR`).
    pub fn admin_addr(&self) -> SocketAddr {
        let out = self.out.lock().unwrap();
        let line = out
            .iter()
            .find(|line| line.contains(", admin on "))
            .expect("a ready line with the admin address");
        line.rsplit(", admin on ").next().unwrap().parse().expect("an address")
    }

    /// Waits until a line on stdout contains `text`.
    pub fn wait_for_stdout(&self, text: &str, within: Duration) {
        eventually(within, &format!("a line on stdout containing {text:?}"), || {
            self.out
                .lock()
                .unwrap()
                .iter()
                .any(|line| line.contains(text))
                .then_some(())
        })
    }

    /// Waits until `n` log lines contain `text`.
    pub fn wait_for_log_count(&self, text: &str, n: usize, within: Duration) {
        eventually(within, &format!("{n} log lines containing {text:?}"), || {
            let count = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .filter(|line| line.contains(text))
                .count();
            (count >= n).then_some(())
        })
    }

    /// Sends `signal` to the master only (not the process group).
    pub fn signal(&self, signal: Signal) {
        kill(self.master, signal).expect("signal the master");
    }

    /// Live (non-zombie) children of the master.
    pub fn workers(&self) -> Vec<Pid> {
        children(self.master)
            .into_iter()
            .filter(|(_, state)| *state != 'Z')
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Zombie children of the master (exited, not reaped).
    pub fn zombies(&self) -> Vec<Pid> {
        children(self.master)
            .into_iter()
            .filter(|(_, state)| *state == 'Z')
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Waits until the worker count is `n`, no zombie is left, and returns the pids.
    pub fn wait_for_workers(&self, n: usize, within: Duration) -> Vec<Pid> {
        eventually(within, &format!("{n} workers and no zombie"), || {
            let workers = self.workers();
            (workers.len() == n && self.zombies().is_empty()).then_some(workers)
        })
    }

    /// After a USR2: waits for the new master to be ready and the old one (our
    /// child) to exit 0, then follows the new one. Returns its pid.
    pub fn follow_upgrade(&mut self, within: Duration) -> Pid {
        let line = self.wait_for_log("upgrade: the new master (pid ", within);
        let new = pid_in(&line).expect("the log line names the new master's pid");
        let status = self.wait_exit(within);
        assert!(
            status.success(),
            "the old master exits 0 after the handover: {status:?}"
        );
        self.master = new;
        new
    }

    /// Waits for the master to exit; panics after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let status = eventually(within, "the master exits", || self.child.try_wait().expect("try_wait"));
        self.exited = Some(status);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let workers = self.workers();
        // The master may be our child, or (after an upgrade) its successor.
        let reap_child = |child: &mut Child| matches!(child.try_wait(), Ok(None));
        let _ = reap_child(&mut self.child);
        if alive(self.master) {
            let _ = kill(self.master, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(self.master) && Instant::now() < deadline {
                let _ = reap_child(&mut self.child);
                thread::sleep(Duration::from_millis(20));
            }
            let _ = kill(self.master, Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers {
            let _ = kill(pid, Signal::SIGKILL);
            // Exec mode: a command leads a process group of its own children.
            let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
        }
        if thread::panicking() {
            eprintln!("--- server logs ---\n{}", self.logs());
        }
    }
}

/// How much of the server's stdout the harness reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StdoutReader {
    Always,
    FirstLine,
}

/// The pid a log line names, as `... (pid 4242) ...`.
pub fn pid_in(line: &str) -> Option<Pid> {
    let pid = line.split("(pid ").nth(1)?.split(')').next()?;
    pid.parse().ok().map(Pid::from_raw)
}

fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("prefork-server: listening on ")?;
    rest.split(' ').next()?.parse().ok()
}

/// Collects the lines of `stream` in a thread, which ends at EOF.
fn collect_lines(stream: impl Read + Send + 'static) -> (Arc<Mutex<Vec<String>>>, thread::JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let reader = thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (lines, reader)
}

/// Runs `command` to completion (at most `within`): exit status, stdout, stderr.
pub fn run_to_exit(mut command: Command, within: Duration) -> (ExitStatus, String, String) {
    let mut child = command.spawn().expect("spawn");
    let (out, out_reader) = collect_lines(child.stdout.take().expect("stdout is piped"));
    let (err, err_reader) = collect_lines(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {within:?}; stderr:\n{}",
                err.lock().unwrap().join("\n")
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    // Every line is read once both pipes are at EOF (the workers, which hold
    // them too, follow the master within moments).
    eventually(
        deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5),
        "EOF on stdout and stderr",
        || (out_reader.is_finished() && err_reader.is_finished()).then_some(()),
    );
    let (out, err) = (out.lock().unwrap().join("\n"), err.lock().unwrap().join("\n"));
    (status, out, err)
}
