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
    temp_path(&format!("{name}.pid"))
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

/// `kill(2)` reads 0 as the caller's process group and -1 as every process it
/// may signal: a pid file holding either must be refused before anything is sent.
#[test]
fn a_pid_file_naming_no_single_master_signals_nothing() {
    let path = pid_file("hostile");
    let path_arg = path.to_str().unwrap();
    for text in ["-1\n", "0\n", "-4242\n", "+\n", "99999999999\n", "12 13\n"] {
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = control(&["stop", "--pid-file", path_arg]);
        assert_eq!(code, Some(1), "{text:?}: {err}");
        assert!(err.contains("not a process id"), "{text:?}: {err}");
    }
    // The test runner is alive: a `kill(-1)` or `kill(0)` above would have hit it.

    // A worker's pid: the master would just respawn it.
    let server = Server::start(&["--workers", "1"]);
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    std::fs::write(&path, format!("{worker}\n")).unwrap();
    let (code, _, err) = control(&["stop", "--pid-file", path_arg]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("a worker, not the master"), "{err}");
    assert_eq!(server.workers(), [worker], "the worker was not signalled");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_pid_file_is_0644_under_any_umask_and_never_written_through_a_symlink() {
    let dir = temp_path("pidlink");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let path = dir.join("server.pid");
    std::os::unix::fs::symlink(&victim, &path).unwrap();

    let mut command = Command::new("sh");
    command
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(server_binary());
    command.args(["--host", "127.0.0.1", "--port", "0", "--workers", "1", "--pid-file"]);
    command
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let server = Server::start_command(command);
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_file(), "the symlink was replaced by a file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", server.master));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `control` with `env` added to its environment.
fn control_with(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new(server_binary());
    command
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let (status, out, err) = run_to_exit(command, Duration::from_secs(30));
    (status.code(), out, err)
}

/// The control commands find the server where the server itself reads its
/// settings: `PREFORK_PID_FILE`, `PREFORK_ADMIN`, the config file (`--config`
/// after or before the command, `PREFORK_CONFIG`); an error names the source
/// of the value it could not use.
#[test]
fn control_commands_read_the_environment_and_the_config_file() {
    let dir = tempdir("control-sources");
    let pids = dir.join("app.pid");
    let pids_arg = pids.to_str().unwrap();
    let mut server = Server::start(&["--workers", "2", "--pid-file", pids_arg, "--admin", "127.0.0.1:0"]);
    let admin = server.admin_addr().to_string();
    let file = dir.join("prefork.toml");
    std::fs::write(&file, format!("pid_file = {pids_arg:?}\nadmin = {admin:?}\n")).unwrap();
    let file_arg = file.to_str().unwrap();

    let (code, out, err) = control_with(&[("PREFORK_PID_FILE", pids_arg)], &["reload"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("sent SIGHUP to the master (pid {})", server.master)),
        "{out}"
    );
    server.wait_for_log("reload complete", Duration::from_secs(20));

    let (code, out, err) = control_with(&[("PREFORK_ADMIN", &admin)], &["status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 workers · generation 2"), "{out}");
    assert!(out.contains("· steered by load") && out.contains("flight"), "{out}");

    let (code, out, err) = control_with(&[], &["status", "--config", file_arg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 workers"), "{out}");

    let (code, out, err) = control_with(&[("PREFORK_CONFIG", file_arg)], &["scale", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("runs 1 worker"), "{out}");

    // Only what the command needs is read: an admin address on all
    // interfaces (which the server takes with --admin-allow-remote) is no
    // reason to refuse a reload.
    let remote = dir.join("remote.toml");
    std::fs::write(&remote, format!("pid_file = {pids_arg:?}\nadmin = \"0.0.0.0:9\"\n")).unwrap();
    let (code, _, err) = control_with(&[], &["reload", "--config", remote.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    server.wait_for_log_count("reload complete", 2, Duration::from_secs(20));

    let (code, _, err) = control_with(&[("PREFORK_PID_FILE", "/nonexistent/app.pid")], &["reload"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot read the pid file /nonexistent/app.pid (from PREFORK_PID_FILE)"),
        "{err}"
    );
    let (code, _, err) = control_with(&[], &["reload"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("which server? give --pid-file, or set PREFORK_PID_FILE"),
        "{err}"
    );

    let (code, _, err) = control_with(&[], &["--config", file_arg, "stop"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

/// A count set by `scale` survives a HUP while the config file's `workers`
/// stays as it was, and gives way when the file changes it; both are logged.
#[test]
fn a_reload_keeps_a_scaled_count_unless_the_file_changes_workers() {
    let dir = tempdir("scale-and-reload");
    let file = dir.join("prefork.toml");
    std::fs::write(&file, "workers = 2\n").unwrap();
    let file_arg = file.to_str().unwrap();
    let server = Server::start(&["--config", file_arg, "--admin", "127.0.0.1:0"]);
    server.wait_for_workers(2, Duration::from_secs(5));
    server.signal(nix::sys::signal::Signal::SIGTTOU);
    server.wait_for_workers(1, Duration::from_secs(10));

    server.signal(nix::sys::signal::Signal::SIGHUP);
    server.wait_for_log_count("reload complete", 1, Duration::from_secs(20));
    let kept = server.wait_for_log("(set by scale) kept", Duration::from_secs(5));
    assert!(
        kept.contains(&format!("workers: 1 (set by scale) kept; {file_arg} still says 2")),
        "{kept}"
    );
    assert_eq!(server.wait_for_workers(1, Duration::from_secs(10)).len(), 1);

    std::fs::write(&file, "workers = 3\n").unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let changed = server.wait_for_log("(set by scale) ->", Duration::from_secs(10));
    assert!(
        changed.contains(&format!("workers: 1 (set by scale) -> 3 (from {file_arg})")),
        "{changed}"
    );
    server.wait_for_workers(3, Duration::from_secs(20));
}

/// The usage line says the three ways to run the binary, in words.
#[test]
fn the_usage_line_reads_as_the_three_ways_to_run_it() {
    let (code, out, _) = control(&["--help"]);
    assert_eq!(code, Some(0));
    for line in [
        "Usage: prefork-server [OPTIONS]",
        "prefork-server [OPTIONS] -- PROGRAM [ARGS]...     run PROGRAM in every slot (exec mode)",
        "prefork-server <COMMAND> [OPTIONS]",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    assert!(!out.contains("[-- <COMMAND>...] [COMMAND]"), "{out}");
}

/// Every setting of `Config` has a type that can be named from the crate
/// root (this test compiles only if they can).
#[test]
fn the_types_of_configs_public_fields_are_nameable() {
    let config = prefork_server::Config::default();
    let ready: prefork_server::ExecReady = config.exec_ready();
    let stop: prefork_server::StopSignal = config.stop_signal();
    let balance: prefork_server::Balance = config.balance();
    let format: prefork_server::LogFormat = config.log_format();
    let access: prefork_server::AccessLogFormat = config.access_log_format();
    assert_eq!(ready, prefork_server::ExecReady::Accepting);
    assert_eq!(stop.name(), "SIGTERM");
    assert_eq!(balance, prefork_server::Balance::Steered);
    assert_eq!(format, prefork_server::LogFormat::Text);
    assert_eq!(access, prefork_server::AccessLogFormat::Combined);
}

/// `scale` with a pid file and an admin address of two different servers
/// signals neither: the admin listener must belong to the pid file's master.
#[test]
fn scale_refuses_an_admin_listener_of_another_master() {
    let dir = tempdir("scale-two-servers");
    let pids = dir.join("one.pid");
    let one = Server::start(&["--workers", "2", "--pid-file", pids.to_str().unwrap()]);
    let other = Server::start(&["--workers", "2", "--admin", "127.0.0.1:0"]);
    let admin = other.admin_addr().to_string();
    let (code, _, err) = control(&["scale", "3", "--pid-file", pids.to_str().unwrap(), "--admin", &admin]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "belongs to master {}, not to the master (pid {})",
            other.master, one.master
        )),
        "{err}"
    );
    assert!(err.contains("nothing sent"), "{err}");
    std::thread::sleep(Duration::from_millis(500)); // a TTIN would have a third worker by now
    assert_eq!(one.workers().len(), 2, "{}", one.logs());
}
