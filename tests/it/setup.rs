//! The per-worker setup may be async: it runs on the worker's runtime before the
//! worker says it is ready; failing, or not finishing within --ready-timeout, is
//! a boot failure.

use std::time::Duration;

use crate::util::*;

fn with_setup(how: &str, args: &[&str]) -> std::process::Command {
    let mut command = command(example_binary(), args);
    command.env("FIXTURE_ASYNC_SETUP", how);
    command
}

#[test]
fn an_async_setup_runs_on_the_workers_runtime_before_ready() {
    let server = Server::start_command(with_setup("sleep", &["--workers", "2"]));
    assert_eq!(get(server.addr, "/").unwrap().status, 200);
}

#[test]
fn an_async_setup_that_fails_is_a_boot_failure_and_halts_the_first_generation() {
    let (status, _, err) = run_to_exit(with_setup("fail", &["--workers", "2"]), Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("fixture: every worker failed to boot; worker")
            && last.ends_with("cannot make the service: the database said no (FIXTURE_ASYNC_SETUP=fail)"),
        "{err}"
    );
}

#[test]
fn an_async_setup_that_never_finishes_is_a_boot_failure_at_the_ready_timeout() {
    let command = with_setup("hang", &["--workers", "1", "--ready-timeout", "1s"]);
    let (status, _, err) = run_to_exit(command, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("the per-worker setup did not finish within 1.0s (--ready-timeout)"),
        "{err}"
    );
}

/// A setup that blocks the worker's thread (so no heartbeat) is judged by
/// --ready-timeout, not by --timeout: killed once, as a boot failure, and the
/// first generation failing halts the master with the cause. It is not killed
/// and respawned every --timeout.
#[test]
fn a_blocking_setup_is_a_boot_failure_at_the_ready_timeout_not_a_hung_worker() {
    let marker = temp_path("blocking-boot");
    std::fs::write(&marker, "").unwrap();
    let mut command = command(
        example_binary(),
        &["--workers", "1", "--timeout", "1s", "--ready-timeout", "2s"],
    );
    command.env("FIXTURE_SLOW_BOOT_IF_EXISTS", &marker);
    let (status, _, err) = run_to_exit(command, Duration::from_secs(20));
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        !err.contains("timed out after"),
        "--timeout judged a booting worker:\n{err}"
    );
    assert_eq!(
        err.matches(" spawned").count(),
        1,
        "one boot, not a kill-and-respawn loop:\n{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("every worker failed to boot; worker 0 (pid ")
            && last.ends_with("not ready within 2.0s (--ready-timeout)"),
        "{err}"
    );
}

/// TERM while a worker's setup runs: the worker exits at once (it serves
/// nothing, so there is nothing to drain), and so does the master.
#[test]
fn a_stop_during_the_setup_ends_it_at_once() {
    let mut server = Server::start_unready(with_setup("hang", &["--workers", "2", "--ready-timeout", "60s"]));
    server.wait_for_log_count(" spawned", 2, Duration::from_secs(10));
    let stopped = std::time::Instant::now();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert!(stopped.elapsed() < Duration::from_secs(5), "{:?}", stopped.elapsed());
    assert!(
        server.logs().contains("SIGTERM before it was ready: exiting"),
        "{}",
        server.logs()
    );
}
