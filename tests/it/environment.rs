//! Settings from the environment: every flag has a `PREFORK_<NAME>` variable,
//! and `PORT` and `WEB_CONCURRENCY` are honoured as Heroku, Cloud Run, gunicorn
//! and Puma do. Precedence: flags > environment > config file > defaults.

use std::process::Command;
use std::time::Duration;

use crate::util::*;

/// The server binary with `args` only (no --host/--port of the harness), a
/// config file naming `workers = 3`, and `env`.
fn with_env(args: &[&str], env: &[(&str, &str)], name: &str) -> (Command, std::path::PathBuf) {
    let path = temp_path(&format!("{name}.toml"));
    std::fs::write(&path, "host = \"127.0.0.1\"\nport = 0\nworkers = 3\n").unwrap();
    let mut command = bare_command(server_binary(), &["--config", path.to_str().unwrap()]);
    command.args(args);
    command.envs(env.iter().copied());
    (command, path)
}

fn workers_with(args: &[&str], env: &[(&str, &str)], name: &str) -> usize {
    let (command, path) = with_env(args, env, name);
    let server = Server::start_command(command);
    let line = server.wait_for_log("starting", Duration::from_secs(5));
    let _ = std::fs::remove_file(path);
    line.split("starting ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    assert_eq!(workers_with(&[], &[], "env-file"), 3, "the file alone");
    assert_eq!(
        workers_with(&[], &[("PREFORK_WORKERS", "2")], "env-var"),
        2,
        "the environment over the file"
    );
    assert_eq!(
        workers_with(&["--workers", "1"], &[("PREFORK_WORKERS", "2")], "env-flag"),
        1,
        "the flag over the environment"
    );
    assert_eq!(
        workers_with(&[], &[("WEB_CONCURRENCY", "2")], "env-web"),
        2,
        "WEB_CONCURRENCY"
    );
    assert_eq!(
        workers_with(&[], &[("WEB_CONCURRENCY", "2"), ("PREFORK_WORKERS", "1")], "env-both"),
        1,
        "PREFORK_WORKERS over WEB_CONCURRENCY"
    );
}

#[test]
fn port_and_durations_as_users_type_them_come_from_the_environment() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let port_text = port.to_string();
    let (command, path) = with_env(
        &["--admin", "127.0.0.1:0"],
        &[("PORT", port_text.as_str()), ("PREFORK_GRACEFUL_TIMEOUT", "1m30s")],
        "env-port",
    );
    let server = Server::start_command(command);
    let _ = std::fs::remove_file(path);
    assert_eq!(server.addr.port(), port, "PORT");
    let status = get(server.admin_addr(), "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(status["config"]["graceful_timeout_s"], 90.0, "{status:#}");
}

#[test]
fn a_bad_value_in_the_environment_is_a_usage_error_naming_the_variable() {
    for (env, named) in [
        (("PREFORK_WORKERS", "lots"), "PREFORK_WORKERS"),
        (("WEB_CONCURRENCY", "0"), "WEB_CONCURRENCY"),
        (("PORT", "http"), "PORT"),
        (("PREFORK_GRACEFUL_TIMEOUT", "soon"), "soon"),
    ] {
        let (command, path) = with_env(&[], &[env], "env-bad");
        let (status, _, err) = run_to_exit(command, Duration::from_secs(10));
        let _ = std::fs::remove_file(path);
        assert_eq!(status.code(), Some(2), "{env:?}: {err}");
        assert!(err.contains(named), "{env:?} names {named}: {err}");
    }
}
