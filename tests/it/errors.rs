//! The errors a user hits first: a busy port, a bad flag.

use std::process::Command;
use std::time::Duration;

use crate::util::*;

#[test]
fn a_port_in_use_is_one_line_exit_1_and_no_worker() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut command = Command::new(server_binary());
    command.args(["--host", "127.0.0.1", "--port", &port]);
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let (status, _, stderr) = run_to_exit(command, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let message = format!("prefork-server: cannot bind 127.0.0.1:{port}: address in use");
    assert_eq!(stderr.lines().last(), Some(message.as_str()), "{stderr}");
    assert!(!stderr.contains("spawned"), "no worker is forked: {stderr}");
}

#[test]
fn an_address_not_on_this_machine_is_refused() {
    // 192.0.2.0/24 is TEST-NET-1: never assigned to a host. Nothing is sent.
    let mut command = Command::new(server_binary());
    command.args(["--host", "192.0.2.1", "--port", "0"]);
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let (status, _, stderr) = run_to_exit(command, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.ends_with("cannot bind 192.0.2.1:0: address not available on this machine"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_are_usage_errors_with_exit_2() {
    for args in [
        &["--workers", "0"][..],
        &["--port", "70000"],
        &["--no-such-flag"],
        &["--graceful-timeout", "soon"],
    ] {
        let mut command = Command::new(server_binary());
        command.args(args);
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let (status, _, stderr) = run_to_exit(command, Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error:") && stderr.contains("--help"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn help_documents_the_signal_table_and_the_exit_codes() {
    let output = Command::new(server_binary()).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    // Every flag is checked against the program's own list in `readme.rs`.
    let expected = ["TERM, INT", "QUIT", "CHLD", "HUP", "Exit codes"];
    for needle in expected {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn a_bad_config_file_stops_the_start_with_exit_2_naming_the_key() {
    let path = temp_path("bad.toml");
    std::fs::write(&path, "workers = 2\ngraceful_timeout = \"soon\"\n").unwrap();
    let mut command = Command::new(server_binary());
    command.args(["--port", "0", "--config", path.to_str().unwrap()]);
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let (status, _, stderr) = run_to_exit(command, Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{stderr}");
    let expected = format!(
        "prefork-server: {}: line 2, `graceful_timeout`: 'soon' is not a duration",
        path.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(!stderr.contains("spawned"), "nothing started: {stderr}");
}

#[test]
fn a_thread_before_run_with_is_refused_with_the_fix() {
    let mut command = command(example_binary(), &["--workers", "1"]);
    command.env("FIXTURE_THREAD", "1");
    let (status, _, err) = run_to_exit(command, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to fork: the master has 2 threads"), "{err}");
    assert!(
        err.contains("no #[tokio::main]") && err.contains("per-worker setup"),
        "{err}"
    );
}

/// A pid file that cannot be written (its directory read-only, or missing) is
/// a startup error, exit 1, naming the path and the cause, before anything is
/// bound or forked: the control commands would find no master.
#[test]
fn a_pid_file_that_cannot_be_written_stops_the_start_with_exit_1() {
    let read_only = Tmpfs::mount("read-only", "ro,size=64k");
    let missing = tempdir("pid-missing").join("no/such/dir");
    for (dir, cause) in [
        (&read_only.0, "Read-only file system"),
        (&missing, "No such file or directory"),
    ] {
        let path = dir.join("server.pid");
        let command = command(
            server_binary(),
            &["--workers", "1", "--pid-file", path.to_str().unwrap()],
        );
        let (status, _, stderr) = run_to_exit(command, Duration::from_secs(10));
        assert_eq!(status.code(), Some(1), "{stderr}");
        let expected = format!("prefork-server: cannot write the pid file {}: {cause}", path.display());
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(!stderr.contains("spawned"), "nothing started: {stderr}");
    }
}
