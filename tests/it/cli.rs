//! The control commands against a real running server.

use std::process::Command;
use std::time::Duration;

use crate::util::*;

fn control(args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new(server_binary());
    command
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let (status, out, err) = run_to_exit(command, Duration::from_secs(30));
    (status.code(), out, err)
}

fn pid_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("prefork-test-{}-{name}.pid", std::process::id()))
}

#[test]
fn reload_scale_status_and_stop_act_on_the_running_master() {
    let pids = pid_file("cli");
    let pids_arg = pids.to_str().unwrap();
    let mut server = Server::start(&["--workers", "2", "--pid-file", pids_arg, "--admin", "127.0.0.1:0"]);
    let admin = server.admin_addr().to_string();
    let first = server.wait_for_workers(2, Duration::from_secs(5));

    let (code, out, err) = control(&["reload", "--pid-file", pids_arg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("sent SIGHUP to the master (pid {})", server.master)),
        "{out}"
    );
    server.wait_for_log("reload complete", Duration::from_secs(20));

    let (code, out, err) = control(&["scale", "3", "--pid-file", pids_arg, "--admin", &admin]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("runs 3 workers"), "{out}");
    let now = server.wait_for_workers(3, Duration::from_secs(10));
    assert!(first.iter().all(|pid| !now.contains(pid)));

    let (code, out, err) = control(&["status", "--admin", &admin]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("3 workers · generation 2 · 1 reloads"), "{out}");
    for pid in &now {
        assert!(out.contains(&pid.to_string()), "{pid} missing:\n{out}");
    }

    let (code, _, err) = control(&["stop", "--pid-file", pids_arg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert!(!pids.exists(), "the master removes its pid file");
}

#[test]
fn a_missing_or_stale_pid_file_is_a_clear_error() {
    let missing = pid_file("missing");
    let (code, _, err) = control(&["reload", "--pid-file", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot read the pid file") && err.contains("--pid-file"),
        "{err}"
    );

    let stale = pid_file("stale");
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(&stale, format!("{pid}\n")).unwrap();
    let (code, _, err) = control(&["stop", "--pid-file", stale.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("stale pid file") && err.contains(&format!("no process {pid}")),
        "{err}"
    );

    // A live pid that is some other program (the test runner itself).
    std::fs::write(&stale, format!("{}\n", std::process::id())).unwrap();
    let (code, _, err) = control(&["stop", "--pid-file", stale.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("stale pid file") && err.contains("not \"prefork-server\""),
        "{err}"
    );
}
