//! What the admin views and the log show of the traffic: request durations,
//! status classes, the accept queues and the time spent in them, slow
//! requests, where a hung worker hung, the dashboard's charts, `top`.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};

use crate::util::*;

/// The value of the sample `series` (name and labels, as written) in `/metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn metrics(admin: SocketAddr) -> Option<String> {
    get(admin, "/metrics").ok().map(|response| response.body)
}

fn status(admin: SocketAddr) -> Option<serde_json::Value> {
    serde_json::from_str(&get(admin, "/status").ok()?.body).ok()
}

/// `n` requests over HTTP/2 (prior knowledge), on one connection of
/// h2load's. (Not curl's: curl 7.88 fails a second request on a reused
/// prior-knowledge connection, curl#10634.)
fn h2_requests(addr: SocketAddr, n: usize) {
    let output = Command::new("h2load")
        .args(["-n", &n.to_string(), "-c", "1", &format!("http://{addr}/")])
        .output()
        .expect("h2load runs (nghttp2-client)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&format!("{n} succeeded, 0 failed")), "{text}");
}

#[test]
fn the_duration_histogram_counts_every_request_over_http1_and_http2_in_its_bucket() {
    let server = Server::start_example(&["--workers", "2", "--admin", "127.0.0.1:0"]);
    for _ in 0..20 {
        assert_eq!(get(server.addr, "/").unwrap().status, 200);
    }
    h2_requests(server.addr, 10);
    assert_eq!(get(server.addr, "/sleep?ms=300").unwrap().status, 200);
    let text = eventually(Duration::from_secs(5), "31 requests counted", || {
        let text = metrics(server.admin_addr())?;
        (sample(&text, "prefork_request_duration_seconds_count") == Some(31.0)).then_some(text)
    });
    // 300 ms is in (0.25, 0.5]; the others as fast as the machine allows.
    let below = |le: &str| {
        sample(
            &text,
            &format!("prefork_request_duration_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert!(below("0.25").unwrap() <= 30.0, "{text}");
    assert_eq!(below("0.5"), Some(31.0), "{text}");
    assert_eq!(
        sample(&text, "prefork_request_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(31.0),
        "{text}"
    );
    let sum = sample(&text, "prefork_request_duration_seconds_sum").unwrap();
    assert!((0.3..5.0).contains(&sum), "{sum}");
    assert_eq!(
        sample(&text, "prefork_responses_total{code=\"2xx\"}"),
        Some(31.0),
        "{text}"
    );
    let per_slot: f64 = (0..2)
        .filter_map(|slot| {
            sample(
                &text,
                &format!("prefork_slot_request_duration_seconds_count{{slot=\"{slot}\"}}"),
            )
        })
        .sum();
    assert_eq!(per_slot, 31.0, "the slots add up to the whole:\n{text}");
    assert!(sample(&text, "prefork_sent_bytes_total").unwrap() > 31.0 * 10.0);

    let status = status(server.admin_addr()).unwrap();
    let whole = &status["server"]["duration"];
    assert_eq!(whole["count"], 31, "{status:#}");
    let p50 = whole["p50_s"].as_f64().unwrap();
    let p99 = whole["p99_s"].as_f64().unwrap();
    assert!(p50 < 0.25 && (0.25..=0.5).contains(&p99), "p50 {p50}, p99 {p99}");
    let slots = status["slots"].as_array().unwrap();
    let counted: u64 = slots
        .iter()
        .map(|slot| slot["duration"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 31, "{status:#}");
    assert!(slots
        .iter()
        .all(|slot| slot["duration"]["p99_s"].is_number() || slot["duration"]["count"] == 0));
}

#[test]
fn responses_are_counted_by_status_class_and_survive_the_worker_that_served_them() {
    // The default app answers 405 to a POST; the fixture's /panic is a 500.
    let server = Server::start(&["--workers", "1", "--admin", "127.0.0.1:0"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 405);
    assert_eq!(get(server.addr, "/").unwrap().status, 200);
    let counted = |text: &str, class: &str| sample(text, &format!("prefork_responses_total{{code=\"{class}\"}}"));
    eventually(Duration::from_secs(5), "a 4xx and a 2xx", || {
        let text = metrics(server.admin_addr())?;
        (counted(&text, "4xx") == Some(1.0) && counted(&text, "2xx") == Some(1.0)).then_some(())
    });
    // A worker killed and replaced: its counts stay in its slot's.
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    kill(worker, Signal::SIGKILL).unwrap();
    eventually(Duration::from_secs(10), "a replacement", || {
        let now = server.workers();
        (now.len() == 1 && now[0] != worker).then_some(())
    });
    eventually(Duration::from_secs(10), "the counts kept", || {
        let text = metrics(server.admin_addr())?;
        let kept = counted(&text, "4xx") == Some(1.0)
            && sample(&text, "prefork_slot_responses_total{slot=\"0\",code=\"2xx\"}") == Some(1.0)
            && !text.contains(&format!("pid=\"{worker}\""));
        kept.then_some(())
    });

    let fixture = Server::start_example(&["--workers", "1", "--admin", "127.0.0.1:0"]);
    assert_eq!(get(fixture.addr, "/panic").unwrap().status, 500);
    eventually(Duration::from_secs(5), "a 5xx", || {
        (counted(&metrics(fixture.admin_addr())?, "5xx") == Some(1.0)).then_some(())
    });
}

#[test]
fn slow_requests_are_logged_and_fast_ones_are_not() {
    let server = Server::start_example(&["--workers", "1", "--slow-request", "100ms"]);
    assert_eq!(get(server.addr, "/sleep?ms=1").unwrap().status, 200);
    assert_eq!(get(server.addr, "/sleep?ms=300").unwrap().status, 200);
    let line = server.wait_for_log("slow request: GET /sleep?ms=300", Duration::from_secs(5));
    let line = line
        .lines()
        .find(|line| line.contains("slow request: GET /sleep?ms=300"))
        .unwrap();
    assert!(line.contains("status 200") && line.contains("worker 0 (pid"), "{line}");
    let ms: f64 = line
        .split(" in ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((300.0..2000.0).contains(&ms), "{line}");
    assert!(!server.logs().contains("GET /sleep?ms=1 "), "{}", server.logs());
}

#[test]
fn a_stopped_commands_queue_shows_in_the_admin_views_within_a_second() {
    let args = ["--workers", "1", "--admin", "127.0.0.1:0", "--", "python3"];
    let script = crate::exec::script("hello.py");
    let server = Server::start(&[&args[..], &[script.as_str()]].concat());
    let command = eventually(Duration::from_secs(10), "the command ready", || {
        let status = status(server.admin_addr())?;
        let slot = &status["slots"][0];
        (slot["state"] == "ready").then(|| nix::unistd::Pid::from_raw(slot["pid"].as_i64().unwrap() as i32))
    });
    kill(command, Signal::SIGSTOP).unwrap();
    let _waiting: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    // Measured once a second by the master; the deadline leaves room for a
    // slow machine.
    let text = eventually(Duration::from_secs(4), "10 queued", || {
        let text = metrics(server.admin_addr())?;
        (sample(&text, "prefork_listen_queue{slot=\"0\"}")? >= 10.0).then_some(text)
    });
    assert!(
        sample(&text, "prefork_listen_backlog{slot=\"0\"}").unwrap() >= 10.0,
        "{text}"
    );
    assert!(
        !text.contains("prefork_request_duration_seconds"),
        "a command's requests are not counted:\n{text}"
    );
    let status = status(server.admin_addr()).unwrap();
    assert!(status["slots"][0]["queue"].as_u64().unwrap() >= 10, "{status:#}");
    assert!(status["server"]["queue"].as_u64().unwrap() >= 10, "{status:#}");
    kill(command, Signal::SIGCONT).unwrap();
}

#[test]
fn a_connection_that_waited_two_seconds_in_the_queue_lands_above_the_one_second_bucket() {
    let server = Server::start_example(&["--workers", "1", "--balance", "reuseport", "--admin", "127.0.0.1:0"]);
    assert_eq!(get(server.addr, "/").unwrap().status, 200);
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    kill(worker, Signal::SIGSTOP).unwrap();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    send_request(&mut stream, "GET", "/", false).unwrap();
    // The wait is what is measured: the connection sits in the queue this long.
    std::thread::sleep(Duration::from_secs(2));
    kill(worker, Signal::SIGCONT).unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 200);
    let text = eventually(Duration::from_secs(5), "2 connections counted", || {
        let text = metrics(server.admin_addr())?;
        (sample(&text, "prefork_queue_wait_seconds_count")? >= 2.0).then_some(text)
    });
    let count = sample(&text, "prefork_queue_wait_seconds_count").unwrap();
    let below_1s = sample(&text, "prefork_queue_wait_seconds_bucket{le=\"1.0\"}").unwrap();
    let below_2_5s = sample(&text, "prefork_queue_wait_seconds_bucket{le=\"2.5\"}").unwrap();
    assert_eq!(below_1s, count - 1.0, "one connection waited over 1 s:\n{text}");
    assert_eq!(below_2_5s, count, "and not over 2.5 s:\n{text}");
    assert!(
        sample(&text, "prefork_queue_wait_seconds_sum").unwrap() >= 1.9,
        "{text}"
    );
}

#[test]
fn a_hung_rust_worker_logs_where_it_hung_before_it_is_killed() {
    let server = Server::start_example(&["--workers", "1", "--timeout", "2s"]);
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    let addr = server.addr;
    let client = std::thread::spawn(move || get(addr, "/block?ms=8000"));
    server.wait_for_log("timed out after 2.0s", Duration::from_secs(10));
    let header = format!("worker 0 (pid {worker}) hung here");
    // The stack is one record of many lines: read once it is all there.
    let logs = eventually(Duration::from_secs(3), "the stack", || {
        let logs = server.logs();
        (logs.contains(&header) && logs.contains("killed by SIGABRT")).then_some(logs)
    });
    let stack = logs.split(&header).nth(1).unwrap();
    let block = stack
        .find("fixture::block")
        .unwrap_or_else(|| panic!("no fixture::block in\n{stack}"));
    let sleep = stack
        .find("std::thread")
        .unwrap_or_else(|| panic!("no std::thread in\n{stack}"));
    assert!(sleep < block, "the sleep is inside the block:\n{stack}");
    assert!(stack.contains("examples/fixture.rs:"), "with its line:\n{stack}");
    assert!(logs.contains(&format!("(pid {worker}) killed by SIGABRT")), "{logs}");
    drop(client.join());
}

#[test]
fn a_hung_python_command_logs_its_traceback() {
    let script = crate::exec::script("hello.py");
    let server = Server::start(&["--workers", "1", "--timeout", "2s", "--", "python3", &script]);
    eventually(Duration::from_secs(10), "the command answers", || {
        get(server.addr, "/").ok()
    });
    let addr = server.addr;
    let client = std::thread::spawn(move || get(addr, "/block?ms=10000"));
    server.wait_for_log("timed out after 2.0s", Duration::from_secs(15));
    let logs = eventually(Duration::from_secs(3), "the traceback", || {
        let logs = server.logs();
        (logs.contains("in do_GET") && logs.contains("killed by SIGABRT")).then_some(logs)
    });
    assert!(logs.contains("Fatal Python error: Aborted"), "{logs}");
    assert!(logs.contains("hello.py\", line "), "{logs}");
    drop(client.join());
}

#[test]
fn the_dashboard_draws_its_charts_without_a_script_error() {
    let server = Server::start_example(&["--workers", "2", "--admin", "127.0.0.1:0"]);
    let addr = server.addr;
    let traffic = std::thread::spawn(move || {
        for _ in 0..200 {
            let _ = get(addr, "/sleep?ms=10");
        }
    });
    let checker = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/page-check.js");
    let output = Command::new("node")
        .arg(checker)
        .arg(format!("http://{}/", server.admin_addr()))
        .arg("6000")
        .output()
        .expect("node runs scripts/page-check.js (Node.js and Chromium: .ci/run installs them)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("{err}: {stdout}"));
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    let page = &report["dashboard"];
    assert!(page["polls"].as_u64().unwrap() >= 3, "{report:#}");
    assert!(page["charts"].as_u64().unwrap() >= 5, "{report:#}");
    assert_eq!(page["errors"], 0, "{report:#}");
    traffic.join().unwrap();
}

#[test]
fn top_redraws_the_table_with_requests_per_second_and_p99() {
    let server = Server::start_example(&["--workers", "2", "--admin", "127.0.0.1:0"]);
    let addr = server.addr;
    let traffic = std::thread::spawn(move || {
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < until {
            let _ = get(addr, "/");
        }
    });
    let admin = server.admin_addr().to_string();
    let output = Command::new(server_binary())
        .args(["top", "--admin", &admin, "--interval", "500ms", "--count", "4"])
        .output()
        .unwrap();
    traffic.join().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let frames: Vec<&str> = text.split("master ").skip(1).collect();
    assert_eq!(frames.len(), 4, "{text}");
    assert!(frames[0].contains("req/s") && frames[0].contains("p99"), "{text}");
    // After the first frame, the rate is measured: some worker served many.
    let busy = frames[1..].iter().any(|frame| {
        let mut lines = frame.lines().skip(1);
        let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        let column = header.iter().position(|name| *name == "req/s").expect("a req/s column");
        lines.any(|row| {
            let cells: Vec<&str> = row.split_whitespace().collect();
            let rate = cells.get(column).and_then(|rate| rate.parse::<f64>().ok());
            rate.is_some_and(|rate| rate >= 10.0)
        })
    });
    assert!(busy, "{text}");
}
