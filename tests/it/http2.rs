//! HTTP/2 with prior knowledge (h2c), beside HTTP/1.1 on the same port, against
//! the clients users run: curl, nghttp and h2load (nghttp2-client).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// A conformance run: `scripts/h2_conformance.py`, with Python's `h2` as the
/// client (raw frames where it must send what `h2` refuses), checks the
/// framing, flow control, CONTINUATION, trailers, HEAD, resets and the error
/// codes RFC 9113 requires for malformed requests and broken frames.
#[test]
fn pythons_h2_client_finds_the_server_conformant() {
    let server = Server::start(&["--workers", "1"]);
    let port = server.addr.port().to_string();
    let (ok, out) = run_tool(
        "python3",
        &["scripts/h2_conformance.py", &port],
        Duration::from_secs(60),
    );
    assert!(ok, "{out}");
    let checks = out.lines().filter(|line| line.starts_with("ok   ")).count();
    assert!(checks >= 21 && !out.contains("FAIL"), "{out}");
    assert!(out.contains("ok   a_head_has_no_body"), "{out}");
}

/// The worker gives HTTP/2 responses their `Content-Length` from a cache of
/// recent lengths: each must still be its own body's, when lengths repeat, and
/// when one replaces another in the cache (multiples of 1 KiB share a place);
/// a length the service set stays its own, and a streamed body of unknown
/// length gets none. hyper's client, one request after another on one
/// connection.
#[test]
fn http2_responses_carry_their_own_content_length() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let server = Server::start_example(&["--workers", "1"]);
    let addr = server.addr;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answers = runtime.block_on(async move {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Empty<bytes::Bytes>>();
        // `(path, its Content-Length fields, the body's length)`, one connection.
        let get = |path: String| {
            let client = client.clone();
            async move {
                let uri: hyper::Uri = format!("http://{addr}{path}").parse().unwrap();
                let response = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
                    .await
                    .expect("answered within 10 s")
                    .expect("answered");
                assert_eq!(response.version(), hyper::Version::HTTP_2);
                let lengths: Vec<String> = response
                    .headers()
                    .get_all(hyper::header::CONTENT_LENGTH)
                    .iter()
                    .map(|value| value.to_str().unwrap().to_owned())
                    .collect();
                let body = response.into_body().collect().await.expect("the body").to_bytes();
                (path, lengths, body.len())
            }
        };
        let mut answers = Vec::new();
        for kib in [1usize, 2, 1, 17, 2, 2, 0, 1] {
            answers.push((Some(kib), get(format!("/bytes?kb={kib}")).await));
        }
        // A length the service set is its own; a body of unknown length gets none.
        answers.push((None, get("/preset-length".to_owned()).await));
        answers.push((None, get("/stream?n=2&ms=1".to_owned()).await));
        answers
    });
    for (kib, (path, lengths, received)) in &answers {
        match (kib, path.as_str()) {
            (Some(kib), _) => {
                assert_eq!(*received, kib << 10, "{path}");
                // An empty body ends with its HEADERS frame: no length, as hyper sends it.
                let want = if *kib == 0 {
                    vec![]
                } else {
                    vec![(kib << 10).to_string()]
                };
                assert_eq!(*lengths, want, "{path}: its one Content-Length");
            }
            (None, "/preset-length") => {
                assert_eq!(
                    (lengths.clone(), *received),
                    (vec!["05".to_owned()], 5),
                    "{path}: the service's own"
                );
            }
            (None, _) => {
                assert!(
                    lengths.is_empty(),
                    "{path}: {received} bytes streamed, yet Content-Length {lengths:?}"
                );
                assert!(*received > 0, "{path}: streamed a body");
            }
        }
    }
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

/// A response in flight is never idle over HTTP/2 either: an event stream of an
/// axum app outlives the header read timeout on an h2c connection.
#[test]
fn an_event_stream_over_http2_outlives_the_header_read_timeout() {
    let server = Server::start_command(command(
        example("axum_app"),
        &["--workers", "1", "--header-read-timeout", "1s"],
    ));
    let url = format!("http://{}/sse?n=4&ms=800", server.addr);
    let started = std::time::Instant::now();
    let (ok, out) = run_tool(
        "curl",
        &["-sS", "-N", "--http2-prior-knowledge", &url],
        Duration::from_secs(20),
    );
    assert!(ok, "{out}");
    assert!(started.elapsed() >= Duration::from_millis(2400), "it streamed: {out}");
    for n in 1..=4 {
        assert!(out.contains(&format!("data: {n}\n")), "event {n} missing:\n{out}");
    }
}

/// True if `err` says the request never reached the server's processing: the
/// connection had received a GOAWAY (`NO_ERROR`, the graceful kind) or closed
/// before it was sent. RFC 9113 §6.8 lets a client retry such a request on a
/// new connection, and Go's transport and browsers do; hyper's client leaves
/// it to its caller (hyper#2500).
fn never_processed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(err) = err.downcast_ref::<hyper::Error>() {
            if err.is_canceled() {
                return true;
            }
        }
        if let Some(err) = err.downcast_ref::<h2::Error>() {
            return err.is_go_away() && err.is_remote() && err.reason() == Some(h2::Reason::NO_ERROR);
        }
        cause = err.source();
    }
    false
}

/// 16 HTTP/2 connections × 10 concurrent streams of `GET /` until `stop`:
/// hyper's pooled client, one per connection, which reconnects after a GOAWAY;
/// a request refused before processing is sent again (see `never_processed`).
/// Returns (answered, retried, failed).
fn http2_load(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64, Vec<String>) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let uri: hyper::Uri = format!("http://{addr}/").parse().unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let client = Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http::<Empty<bytes::Bytes>>();
            for _ in 0..10 {
                let (client, uri, stop) = (client.clone(), uri.clone(), Arc::clone(&stop));
                tasks.push(tokio::spawn(async move {
                    let (mut ok, mut retried, mut failed) = (0u64, 0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(uri.clone()).await {
                            Err(err) if never_processed(&err) => retried += 1,
                            Ok(response) if response.status() == 200 => match response.into_body().collect().await {
                                Ok(_) => ok += 1,
                                Err(err) => failed.push(format!("body: {err}")),
                            },
                            Ok(response) => failed.push(format!("status {}", response.status())),
                            Err(err) => failed.push(format!("{err:?}")),
                        }
                    }
                    (ok, retried, failed)
                }));
            }
        }
        let (mut ok, mut retried, mut failed) = (0, 0, Vec::new());
        for task in tasks {
            let (n, again, errors) = task.await.unwrap();
            ok += n;
            retried += again;
            failed.extend(errors);
        }
        (ok, retried, failed)
    })
}

#[test]
fn five_reloads_under_http2_load_fail_no_stream() {
    let server = Server::start(&["--workers", "2", "--graceful-timeout", "10s"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || http2_load(addr, stop))
    };
    std::thread::sleep(Duration::from_millis(300)); // the load's pace: let it start
    for n in 1..=5 {
        server.signal(Signal::SIGHUP);
        server.wait_for_log_count("reload complete", n, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(300)); // traffic on the new workers: the load's pace
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, retried, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed streams, e.g. {:?}",
        failed.len(),
        &failed[..3.min(failed.len())]
    );
    assert!(ok > 1000, "too little traffic to prove anything: {ok}");
    eprintln!(
        "HTTP/2 load across 5 reloads: {ok} streams answered, 0 failed, {retried} refused by a GOAWAY and sent again"
    );
}

/// `--max-body-size` holds each HTTP/2 stream on its own, also one without
/// `content-length` (its length is not known until it ends): over the limit,
/// 413, and the service never gets the bytes past it; a smaller stream on the
/// same connection is served. Both a hyper service (which answers 400 to the
/// body error; the worker makes it 413) and an axum app (which answers 413
/// itself, from the error the worker gives it).
#[test]
fn max_body_size_holds_http2_streams_of_unknown_length() {
    for app in ["fixture", "axum_app"] {
        let server = Server::start_command(command(example(app), &["--workers", "1", "--max-body-size", "4KiB"]));
        let statuses = streamed_posts(server.addr, "/echo", &[16, 2]);
        assert_eq!(statuses[0], (413, 0), "{app}: 16 KiB streamed over 4 KiB");
        assert_eq!(statuses[1], (200, 2048), "{app}: 2 KiB streamed, echoed");
    }
    // A handler that panics on the body's error: 413 too, not a reset.
    let server = Server::start_example(&["--workers", "1", "--max-body-size", "4KiB"]);
    let statuses = streamed_posts(server.addr, "/echo-or-panic", &[16, 2]);
    assert_eq!(statuses, [(413, 0), (200, 2048)]);
}

/// `POST /echo` over one h2c connection for each size (KiB), sent as a stream
/// of 1 KiB frames with no `content-length`: (status, body length) of each.
fn streamed_posts(addr: std::net::SocketAddr, path: &str, sizes_kib: &[usize]) -> Vec<(u16, usize)> {
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::{Body, Frame};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    type Chunks = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<bytes::Bytes>, std::convert::Infallible>>>>;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = path.to_owned();
    runtime.block_on(async move {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Chunks>();
        let mut answers = Vec::new();
        for &kib in sizes_kib {
            let frames = (0..kib).map(|_| Ok(Frame::data(bytes::Bytes::from(vec![b'y'; 1024]))));
            let body = StreamBody::new(stream::iter(frames.collect::<Vec<_>>()));
            assert_eq!(body.size_hint().upper(), None, "no content-length is sent");
            let request = hyper::Request::post(format!("http://{addr}{path}")).body(body).unwrap();
            let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
                .await
                .expect("an answer within 10 s")
                .expect("an answer, not a reset");
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            answers.push((status, body.len()));
        }
        answers
    })
}
