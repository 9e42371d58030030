//! HTTP/2 with prior knowledge (h2c), beside HTTP/1.1 on the same port, against
//! the clients users run: curl, nghttp and h2load (nghttp2-client).

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

/// `tool args...` to completion: (success, stdout + stderr). Panics with what to
/// install when the tool is missing.
fn run_tool(tool: &str, args: &[&str], within: Duration) -> (bool, String) {
    let mut command = Command::new(tool);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Err(err) = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        panic!("{tool}: {err}: install curl and nghttp2-client (apt-get install curl nghttp2-client)");
    }
    let (status, out, err) = run_to_exit(command, within);
    (status.success(), format!("{out}\n{err}"))
}

#[test]
fn http2_with_prior_knowledge_and_http1_share_the_port() {
    let server = Server::start(&["--workers", "2"]);
    let url = format!("http://{}/", server.addr);
    let (ok, out) = run_tool(
        "curl",
        &["-sS", "-i", "--http2-prior-knowledge", &url],
        Duration::from_secs(10),
    );
    assert!(
        ok && out.starts_with("HTTP/2 200") && out.contains("Hello from worker"),
        "{out}"
    );
    let (ok, out) = run_tool("curl", &["-sS", "-i", &url], Duration::from_secs(10));
    assert!(ok && out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn term_sends_goaway_and_lets_the_open_stream_finish() {
    let mut server = Server::start_example(&["--workers", "1", "--graceful-timeout", "10s"]);
    let url = format!("http://{}/sleep?ms=2000", server.addr);
    let client = std::thread::spawn(move || run_tool("nghttp", &["-v", &url], Duration::from_secs(20)));
    server.wait_for_log("sleeping 2000ms", Duration::from_secs(10));
    server.signal(Signal::SIGTERM);
    let (ok, out) = client.join().unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("recv GOAWAY frame"), "the server said GOAWAY:\n{out}");
    assert!(
        out.contains(":status: 200") && out.contains("slept 2000ms"),
        "the stream completed:\n{out}"
    );
    let goaway = out.find("recv GOAWAY").unwrap();
    let answer = out.find(":status: 200").unwrap();
    assert!(goaway < answer, "GOAWAY came while the stream was open:\n{out}");
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn five_reloads_under_http2_load_fail_no_stream() {
    let server = Server::start(&["--workers", "2", "--graceful-timeout", "10s"]);
    let url = format!("http://{}/", server.addr);
    // 16 connections × 10 concurrent streams, for 8 s, while the workers are replaced 5 times.
    let load = std::thread::spawn(move || {
        run_tool(
            "h2load",
            &["-c", "16", "-m", "10", "-D", "8", "--warm-up-time", "0", &url],
            Duration::from_secs(60),
        )
    });
    std::thread::sleep(Duration::from_millis(500)); // let the load start: not a wait for the server
    for n in 1..=5 {
        server.signal(Signal::SIGHUP);
        server.wait_for_log_count("reload complete", n, Duration::from_secs(30));
    }
    let (ok, out) = load.join().unwrap();
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|line| line.starts_with("requests:"))
        .expect("h2load's summary");
    assert!(line.contains(" 0 failed, 0 errored, 0 timeout"), "{line}");
    let done: u64 = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" succeeded")?.parse().ok())
        .unwrap_or(0);
    assert!(done > 1000, "too little traffic to prove anything: {line}");
    assert!(out.contains("status codes: ") && !out.contains(" 0 2xx"), "{out}");
    eprintln!("h2load under 5 reloads: {line}");
}
