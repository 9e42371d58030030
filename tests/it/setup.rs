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
