//! Logs: the access log (combined or JSON, one line per response, written by
//! each worker), the server's own log as JSON or to a file, and USR1 reopening
//! every log file after a rotation, with no line lost.

use std::path::PathBuf;
use std::time::Duration;

use crate::util::*;

fn lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until `path` has `n` lines (the workers write every 250 ms).
fn wait_for_lines(path: &PathBuf, n: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(5),
        &format!("{n} lines in {}", path.display()),
        || {
            let lines = lines(path);
            (lines.len() >= n).then_some(lines)
        },
    )
}

#[test]
fn the_access_log_has_a_combined_line_per_response() {
    let log = temp_path("access.log");
    let server = Server::start(&["--workers", "1", "--access-log", log.to_str().unwrap()]);
    let hello = get(server.addr, "/").unwrap();
    let pid = hello.worker_pid().unwrap();
    get(server.addr, "/some/path?q=1").unwrap();
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    send_request(&mut stream, "POST", "/form", false).unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 405);
    let lines = wait_for_lines(&log, 3);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let first = &lines[0];
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.contains(&format!("\"GET / HTTP/1.1\" 200 {} ", hello.body.len())),
        "{first}"
    );
    assert!(first.ends_with(&format!(" {pid}")), "the worker's pid last: {first}");
    let duration: u64 = first.rsplit(' ').nth(1).unwrap().parse().expect("the duration in µs");
    assert!(duration < 5_000_000, "{first}");
    assert!(
        lines[1].contains("\"GET /some/path?q=1 HTTP/1.1\" 200 "),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("\"POST /form HTTP/1.1\" 405 "), "{}", lines[2]);
    let _ = std::fs::remove_file(log);
}

#[test]
fn the_access_log_in_json_and_the_servers_own_log_in_json() {
    let log = temp_path("access.json");
    let server = Server::start(&[
        "--workers",
        "1",
        "--access-log",
        log.to_str().unwrap(),
        "--access-log-format",
        "json",
        "--log-format",
        "json",
    ]);
    let hello = get(server.addr, "/json?x=1").unwrap();
    let lines = wait_for_lines(&log, 1);
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("one JSON object per line");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["target"], "/json?x=1");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], hello.body.len());
    assert_eq!(line["pid"], hello.worker_pid().unwrap().as_raw());
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{line}");
    assert!(line["duration_us"].is_u64() && line["time"].is_string(), "{line}");
    // The server's own log: every line a JSON object.
    let logs = server.logs();
    let own: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(
        own.iter()
            .any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("spawned"))),
        "{logs}"
    );
    let _ = std::fs::remove_file(log);
}

/// logrotate's way: rename the files, then USR1 (`prefork-server reopen`): the
/// lines after it go to new files at the same paths, and none is lost.
#[test]
fn usr1_reopens_every_log_file_and_loses_no_line() {
    let (access, own, pid_file) = (
        temp_path("rotate-access.log"),
        temp_path("rotate-own.log"),
        temp_path("rotate.pid"),
    );
    let server = Server::start(&[
        "--workers",
        "2",
        "--access-log",
        access.to_str().unwrap(),
        "--log-file",
        own.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    for _ in 0..20 {
        assert_eq!(get(server.addr, "/before").unwrap().status, 200);
    }
    let (access_old, own_old) = (temp_path("rotate-access.log.1"), temp_path("rotate-own.log.1"));
    std::fs::rename(&access, &access_old).unwrap();
    std::fs::rename(&own, &own_old).unwrap();
    let (status, _, err) = run_to_exit(
        bare_command(server_binary(), &["reopen", "--pid-file", pid_file.to_str().unwrap()]),
        Duration::from_secs(10),
    );
    assert!(status.success(), "{err}");
    // The master and both workers say so in the new log file, once reopened.
    eventually(Duration::from_secs(5), "three reopens in the new log file", || {
        let said = std::fs::read_to_string(&own).ok()?;
        (said.matches("log files reopened").count() == 3).then_some(())
    });
    for _ in 0..20 {
        assert_eq!(get(server.addr, "/after").unwrap().status, 200);
    }
    let new = wait_for_lines(&access, 1);
    eventually(Duration::from_secs(5), "every line written", || {
        (lines(&access).len() + lines(&access_old).len() == 40).then_some(())
    });
    let old = lines(&access_old);
    assert!(old.iter().all(|l| l.contains("/before")), "{old:#?}");
    assert_eq!(old.len(), 20, "every line before the reopen is in the old file");
    assert!(new.iter().all(|l| l.contains("/after")), "{new:#?}");
    assert!(
        std::fs::read_to_string(&own_old).unwrap().contains("spawned"),
        "the old log file kept its lines"
    );
    drop(server);
    for path in [access, access_old, own, own_old, pid_file] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn an_access_log_a_worker_cannot_open_is_a_boot_failure_with_the_cause() {
    let (status, _, err) = run_to_exit(
        command(
            server_binary(),
            &["--workers", "1", "--access-log", "/nonexistent/dir/access.log"],
        ),
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot open the access log /nonexistent/dir/access.log"),
        "{err}"
    );
}

/// A full disk under the access log: one warning for the whole episode, however
/// many writes fail, then one line when writing works again, with the count of
/// lines lost.
#[test]
fn a_full_disk_under_the_access_log_is_one_warning_per_episode() {
    use std::io::Write;
    let disk = Tmpfs::mount("full-disk", "size=256k");
    let log = disk.0.join("access.log");
    let filler = disk.0.join("filler");
    let server = Server::start(&["--workers", "1", "--access-log", log.to_str().unwrap()]);
    // Fill the disk to the last byte.
    let mut file = std::fs::File::create(&filler).unwrap();
    while file.write(&[0; 4096]).is_ok_and(|n| n > 0) {}
    while file.write(&[0]).is_ok_and(|n| n > 0) {}
    drop(file);
    // Two seconds of requests: eight flushes or more, every one failing.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(2) {
        send_request(&mut stream, "GET", "/", true).unwrap();
        assert_eq!(read_response(&mut stream).unwrap().status, 200);
        sent += 1;
    }
    server.wait_for_log("cannot write the access log", Duration::from_secs(5));
    std::fs::remove_file(&filler).unwrap();
    send_request(&mut stream, "GET", "/", true).unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 200);
    let resumed = server.wait_for_log("the access log is written again", Duration::from_secs(5));
    let logs = server.logs();
    assert_eq!(
        logs.matches("cannot write the access log").count(),
        1,
        "one warning for {sent} requests:\n{logs}"
    );
    let lost: u64 = resumed
        .split("again; ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the count of lines lost");
    assert!(lost > 0 && lost <= sent, "{lost} of {sent} lines lost: {resumed}");
    wait_for_lines(&log, 1);
}

/// An app that installs its own subscriber before `run_with`, filtered to its
/// own target (`examples/own_subscriber.rs`): the server's lines still reach
/// `--log-file`, in JSON as asked; the app's events go to the app's
/// subscriber (its stdout) and not into the server's log.
#[test]
fn the_servers_lines_reach_its_log_whatever_subscriber_the_app_installed() {
    use nix::sys::signal::{kill, Signal};
    let log = temp_path("own-subscriber.log");
    let server = Server::start_command(command(
        example("own_subscriber"),
        &[
            "--workers",
            "2",
            "--log-file",
            log.to_str().unwrap(),
            "--log-format",
            "json",
        ],
    ));
    server.wait_for_stdout("the app's subscriber is installed", Duration::from_secs(5));
    server.wait_for_stdout("the app's setup runs in worker", Duration::from_secs(5));
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    kill(workers[0], Signal::SIGKILL).unwrap();
    server.signal(Signal::SIGHUP);
    let lines = eventually(
        Duration::from_secs(10),
        "the kill and the reload in the log file",
        || {
            let lines = lines(&log);
            let has = |text: &str| lines.iter().any(|line| line.contains(text));
            (has(&format!("(pid {}) killed by SIGKILL", workers[0])) && has("reload complete")).then_some(lines)
        },
    );
    assert!(lines.iter().any(|line| line.contains("spawned")), "{lines:?}");
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(event["fields"]["message"].is_string(), "{line}");
        assert!(
            !line.contains("the app's"),
            "an event of the app in the server's log: {line}"
        );
    }
}
