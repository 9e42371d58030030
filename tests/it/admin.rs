//! The admin listener: /status and /healthz against the real pids.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};

use crate::util::*;

#[test]
fn status_lists_every_worker_with_its_counters() {
    let server = Server::start(&["--workers", "2", "--admin", "127.0.0.1:0"]);
    let workers: HashSet<u64> = server
        .wait_for_workers(2, Duration::from_secs(5))
        .iter()
        .map(|pid| pid.as_raw() as u64)
        .collect();
    for _ in 0..10 {
        assert_eq!(get(server.addr, "/").unwrap().status, 200);
    }
    let response = get(server.admin_addr(), "/status").unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let status: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(status["master_pid"], server.master.as_raw() as u64);
    assert_eq!(status["workers"], 2);
    let slots = status["slots"].as_array().unwrap();
    let pids: HashSet<u64> = slots.iter().map(|slot| slot["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids, workers, "{status:#}");
    assert!(slots
        .iter()
        .all(|slot| slot["state"] == "ready" && slot["rss_bytes"].as_u64().unwrap() > 0));
    let requests: u64 = slots.iter().map(|slot| slot["requests"].as_u64().unwrap()).sum();
    assert!(requests >= 10, "{status:#}");

    // A killed worker shows up as a restart with its exit.
    let victim = *server.wait_for_workers(2, Duration::from_secs(5)).first().unwrap();
    kill(victim, Signal::SIGKILL).unwrap();
    server.wait_for_workers(2, Duration::from_secs(10));
    let status: serde_json::Value = eventually(Duration::from_secs(5), "the restart in /status", || {
        let status: serde_json::Value = serde_json::from_str(&get(server.admin_addr(), "/status").ok()?.body).ok()?;
        let slots = status["slots"].as_array()?;
        slots
            .iter()
            .any(|slot| slot["restarts"] == 1 && slot["last_exit"] == "killed by SIGKILL")
            .then_some(status)
    });
    assert_eq!(status["slots"].as_array().unwrap().len(), 2);
}

#[test]
fn healthz_is_503_while_a_slot_has_no_ready_worker() {
    let marker = temp_path("healthz");
    let mut command = command(example_binary(), &["--workers", "2", "--admin", "127.0.0.1:0"]);
    command.env("FIXTURE_FAIL_IF_EXISTS", &marker);
    let server = Server::start_command(command);
    let admin = server.admin_addr();
    let healthy = get(admin, "/healthz").unwrap();
    assert_eq!((healthy.status, healthy.body.as_str()), (200, "ok\n"));
    std::fs::write(&marker, "").unwrap();
    let victim = server.wait_for_workers(2, Duration::from_secs(5))[0];
    kill(victim, Signal::SIGKILL).unwrap();
    let unhealthy = eventually(Duration::from_secs(5), "/healthz turns 503", || {
        get(admin, "/healthz").ok().filter(|response| response.status == 503)
    });
    assert!(unhealthy.body.starts_with("not ready: slots "), "{}", unhealthy.body);
    let unready = get(admin, "/readyz").unwrap();
    assert_eq!(unready.status, 503, "/readyz too: {}", unready.body);
    assert_eq!(
        get(admin, "/livez").unwrap().status,
        200,
        "alive: the other worker serves"
    );
    std::fs::remove_file(&marker).unwrap();
    eventually(Duration::from_secs(15), "/healthz is 200 again", || {
        get(admin, "/healthz").ok().filter(|response| response.status == 200)
    });
}

#[test]
fn a_non_loopback_admin_address_is_refused_unless_allowed() {
    let mut command = Command::new(server_binary());
    command.args(["--port", "0", "--admin", "0.0.0.0:0"]);
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let (status, _, stderr) = run_to_exit(command, Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("admin: 0.0.0.0:0 is reachable from other hosts"),
        "{stderr}"
    );
}

#[test]
fn metrics_expose_the_scoreboard_in_prometheus_text() {
    let server = Server::start(&["--workers", "2", "--admin", "127.0.0.1:0"]);
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    for _ in 0..5 {
        get(server.addr, "/").unwrap();
    }
    let response = get(server.admin_addr(), "/metrics").unwrap();
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = response.body;
    assert!(text.contains("\nprefork_workers 2\n"), "{text}");
    for pid in &workers {
        assert!(text.contains(&format!("pid=\"{pid}\"}}")), "{pid} missing:\n{text}");
    }
    let served: u64 = text
        .lines()
        .filter(|line| line.starts_with("prefork_requests_total{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(served >= 5, "{text}");
    assert!(text.ends_with("# EOF\n"));

    kill(workers[0], Signal::SIGKILL).unwrap();
    server.wait_for_workers(2, Duration::from_secs(10));
    eventually(Duration::from_secs(5), "a died restart in /metrics", || {
        let text = get(server.admin_addr(), "/metrics").ok()?.body;
        text.lines()
            .any(|l| l.starts_with("prefork_restarts_total{") && l.contains("reason=\"died\"") && l.ends_with(" 1"))
            .then_some(())
    });
}

#[test]
fn the_dashboard_is_a_page_that_polls_status() {
    let server = Server::start(&["--workers", "1", "--admin", "127.0.0.1:0"]);
    let page = get(server.admin_addr(), "/").unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.body.contains("<title>prefork-server</title>") && page.body.contains("fetch(\"/status\""));
}

#[test]
fn the_admin_views_are_read_only() {
    use std::io::{Read, Write};
    let server = Server::start(&["--workers", "1", "--admin", "127.0.0.1:0"]);
    for method in ["DELETE", "POST", "PUT"] {
        let mut stream = std::net::TcpStream::connect(server.admin_addr()).unwrap();
        write!(
            stream,
            "{method} /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 405"), "{method}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("allow: get, head"),
            "{method}: {answer}"
        );
    }
    assert_eq!(get(server.admin_addr(), "/status").unwrap().status, 200);
}
