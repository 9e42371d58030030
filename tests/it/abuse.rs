//! HTTP/2 clients that hold a worker's resources or its CPU: every one is bounded
//! per connection, and the other clients are served meanwhile.

use std::thread;
use std::time::{Duration, Instant};

use crate::util::h2raw::*;
use crate::util::*;

/// A connection that sends the preface (with or without its `SETTINGS`) and
/// nothing more is closed at the header read timeout, `GOAWAY` first, even though
/// it never acknowledges the `GOAWAY`'s `PING`.
#[test]
fn preface_only_connections_are_closed_at_the_header_read_timeout() {
    let server = Server::start(&["--workers", "1", "--header-read-timeout", "3s"]);
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let addr = server.addr;
            thread::spawn(move || {
                let started = Instant::now();
                let mut h2 = match i % 2 {
                    0 => RawH2::start(addr, &[]),
                    _ => {
                        let mut h2 = RawH2::connect(addr);
                        h2.send(PREFACE).unwrap();
                        h2
                    }
                };
                // Nothing is answered but the server's SETTINGS: the PING that
                // comes with the GOAWAY is never acknowledged.
                let frames = h2.read_until(Duration::from_secs(10), |_| false);
                (started.elapsed(), h2.closed, frames)
            })
        })
        .collect();
    for client in clients {
        let (after, closed, frames) = client.join().unwrap();
        assert!(closed, "still open after {after:?}: {frames:?}");
        assert!(
            after >= Duration::from_millis(2900) && after <= Duration::from_secs(4),
            "closed after {after:?}: at the header read timeout (3 s), give or take the sweep"
        );
        assert!(frames.iter().any(|f| f.kind == GOAWAY), "a GOAWAY first: {frames:?}");
    }
    let response = get(server.addr, "/").expect("the worker still serves");
    assert_eq!(response.status, 200);
}

/// A client that gives the server no window (`INITIAL_WINDOW_SIZE` 0) keeps no
/// stream past the send timeout: the stream is reset, and the connection
/// serves on.
#[test]
fn a_stream_without_window_is_reset_at_the_send_timeout() {
    let server = Server::start(&["--workers", "1", "--send-timeout", "2s"]);
    let mut h2 = RawH2::start(server.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]);
    let started = Instant::now();
    h2.send(&request(1, "/")).unwrap();
    let frames = h2.read_until(Duration::from_secs(6), |f| f.kind == RST_STREAM);
    let after = started.elapsed();
    let reset = frames.iter().find(|f| f.kind == RST_STREAM);
    assert!(reset.is_some_and(|f| f.stream == 1), "stream 1 reset: {frames:?}");
    assert!(
        frames.iter().any(|f| f.kind == HEADERS && f.stream == 1),
        "its head was sent (HEADERS take no window): {frames:?}"
    );
    assert!(
        !frames.iter().any(|f| f.kind == DATA && f.stream == 1),
        "no byte of its body: {frames:?}"
    );
    assert!(
        after >= Duration::from_millis(1900) && after < Duration::from_secs(4),
        "reset after {after:?}: at the send timeout (2 s), give or take the sweep"
    );
    // The connection is not closed for it: with a window, the next stream is served.
    let mut settings = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend(65_535u32.to_be_bytes());
    h2.send(&frame(SETTINGS, 0, 0, &settings)).unwrap();
    h2.send(&request(3, "/")).unwrap();
    let frames = h2.read_until(Duration::from_secs(5), |f| {
        f.kind == DATA && f.stream == 3 && f.flags & END_STREAM != 0
    });
    let body: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == DATA && f.stream == 3)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert!(
        String::from_utf8_lossy(&body).starts_with("Hello from worker"),
        "stream 3 served on the same connection: {frames:?}"
    );
    assert!(!h2.closed);
}

/// Floods of frames that cost the server work and carry no request end in
/// `GOAWAY` `ENHANCE_YOUR_CALM` and a closed connection; another client is
/// served meanwhile.
#[test]
fn window_update_and_priority_floods_end_in_goaway() {
    let server = Server::start(&["--workers", "1"]);
    let floods = [
        ("WINDOW_UPDATE", frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes())),
        ("PRIORITY", frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16])),
        (
            "WINDOW_UPDATE on a stream",
            frame(WINDOW_UPDATE, 0, 1, &1u32.to_be_bytes()),
        ),
    ];
    for (name, one) in floods {
        let mut h2 = RawH2::start(server.addr, &[]);
        if name.ends_with("on a stream") {
            // A stream to update (answered at once: h2 ignores updates to a
            // stream it closed, and they cost it as much).
            h2.send(&request(1, "/")).unwrap();
        }
        let mut sender = h2.stream.try_clone().unwrap();
        let flood = thread::spawn(move || {
            let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
            let mut sent = 0;
            // At most 1,000,000 frames (13 MB, more than the socket buffers hold):
            // the test stops by itself whatever the server does.
            while sent < 1_000_000 && std::io::Write::write_all(&mut sender, &batch).is_ok() {
                sent += 1000;
            }
            sent
        });
        let frames = h2.read_until(Duration::from_secs(10), |f| {
            f.kind == GOAWAY && f.error_code() == Some(ENHANCE_YOUR_CALM)
        });
        let goaway = frames.iter().find(|f| f.kind == GOAWAY);
        assert_eq!(
            goaway.and_then(Frame::error_code),
            Some(ENHANCE_YOUR_CALM),
            "{name} flood: GOAWAY ENHANCE_YOUR_CALM: {frames:?}"
        );
        let sent = flood.join().unwrap();
        assert!(
            sent < 1_000_000,
            "{name} flood: the connection was closed while it went on"
        );
        let _ = h2.read_until(Duration::from_secs(5), |_| false);
        assert!(h2.closed, "{name} flood: closed");
        assert_eq!(get(server.addr, "/").expect("served").status, 200);
    }
    server.wait_for_log("HTTP/2 flood", Duration::from_secs(5));
}

/// A download read slowly through a small window (64 KiB, given back whole
/// once it is used up, as some clients do: over a second without a byte
/// written) runs to its end on HTTP/2, past the header read timeout and past
/// the drain's grace after a TERM: what h2 still holds for the client once the
/// stream's task is done is not taken for idleness.
#[test]
fn a_slow_http2_download_runs_to_its_end_past_the_idle_and_drain_rules() {
    const KIB: usize = 256;
    const WINDOW: usize = 65_535;
    const RATE: f64 = 50_000.0; // bytes a second
    let mut server = Server::start_example(&["--workers", "1", "--header-read-timeout", "2s"]);
    let mut h2 = RawH2::start(server.addr, &[]);
    h2.send(&request(1, &format!("/bytes?kb={KIB}"))).unwrap();
    let started = Instant::now();
    let (mut got, mut unacknowledged, mut termed, mut goaway) = (0usize, 0usize, false, false);
    loop {
        let Some(frame) = h2.next_frame(Duration::from_secs(10)) else {
            panic!(
                "cut off after {got} bytes and {:?} (GOAWAY seen: {goaway})",
                started.elapsed()
            );
        };
        match frame.kind {
            DATA if frame.stream == 1 => {
                got += frame.payload.len();
                unacknowledged += frame.payload.len();
                if frame.flags & END_STREAM != 0 {
                    break;
                }
                if unacknowledged >= WINDOW {
                    // The client's pace: no faster than RATE, the window given back whole.
                    let due = Duration::from_secs_f64(got as f64 / RATE);
                    if let Some(ahead) = due.checked_sub(started.elapsed()) {
                        thread::sleep(ahead);
                    }
                    let update = (unacknowledged as u32).to_be_bytes();
                    let mut both = self::frame(WINDOW_UPDATE, 0, 1, &update);
                    both.extend(self::frame(WINDOW_UPDATE, 0, 0, &update));
                    let _ = h2.send(&both);
                    unacknowledged = 0;
                }
                if !termed && started.elapsed() > Duration::from_millis(2500) {
                    server.signal(nix::sys::signal::Signal::SIGTERM);
                    termed = true;
                }
            }
            PING if frame.flags & ACK == 0 => {
                if let Err(err) = h2.send(&self::frame(PING, ACK, 0, &frame.payload)) {
                    panic!("PING acknowledged after {got} bytes and {:?}: {err}", started.elapsed());
                }
            }
            GOAWAY => goaway = true,
            _ => {}
        }
    }
    assert_eq!(got, KIB * 1024, "the whole body");
    assert!(
        started.elapsed() > Duration::from_secs(4),
        "read slowly: {:?}",
        started.elapsed()
    );
    assert!(termed && goaway, "the drain's GOAWAY came during the download");
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

/// During a drain, a client that is sent the GOAWAY and its PING, never
/// acknowledges the PING, and opens a stream it gives no window cannot hold
/// the worker: the stream is reset at the send timeout, the connection closed
/// the send timeout after that, and the worker exits long before the graceful
/// timeout.
#[test]
fn a_draining_connection_is_not_held_open_by_a_stream_without_window() {
    let mut server = Server::start(&["--workers", "1", "--send-timeout", "2s", "--graceful-timeout", "60s"]);
    let mut h2 = RawH2::start(server.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]);
    let _ = h2.read_until(Duration::from_millis(300), |_| false); // the server's SETTINGS
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let frames = h2.read_until(Duration::from_secs(5), |f| f.kind == GOAWAY);
    assert!(
        frames.iter().any(|f| f.kind == GOAWAY),
        "the drain's GOAWAY: {frames:?}"
    );
    let asked = Instant::now();
    // hyper's first GOAWAY names the last stream 2^31-1: a new one is still taken.
    h2.send(&request(1, "/")).unwrap();
    let frames = h2.read_until(Duration::from_secs(15), |_| false);
    assert!(
        frames.iter().any(|f| f.kind == RST_STREAM && f.stream == 1),
        "stream 1 reset: {frames:?}"
    );
    assert!(h2.closed, "closed: {frames:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "within twice the send timeout and the sweep: {:?}",
        asked.elapsed()
    );
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

/// A client that gives the window back every 4 KiB it reads, the stream's and
/// the connection's (Go's HTTP/2 client reading through a 4 KiB buffer: eight
/// WINDOW_UPDATEs for every 16 KiB frame), is no flood: 16 MiB arrive whole.
#[test]
fn a_client_giving_the_window_back_every_4_kib_downloads_unhindered() {
    const MIB: usize = 16;
    let server = Server::start_example(&["--workers", "1"]);
    let mut h2 = RawH2::start(server.addr, &[]);
    h2.send(&request(1, &format!("/bytes?kb={}", MIB << 10))).unwrap();
    let (mut got, mut unreturned) = (0usize, 0usize);
    loop {
        let Some(frame) = h2.next_frame(Duration::from_secs(10)) else {
            panic!("cut off after {got} bytes:\n{}", server.logs());
        };
        match frame.kind {
            DATA if frame.stream == 1 => {
                got += frame.payload.len();
                unreturned += frame.payload.len();
                let mut updates = Vec::new();
                while unreturned >= 4096 {
                    updates.extend(self::frame(WINDOW_UPDATE, 0, 1, &4096u32.to_be_bytes()));
                    updates.extend(self::frame(WINDOW_UPDATE, 0, 0, &4096u32.to_be_bytes()));
                    unreturned -= 4096;
                }
                h2.send(&updates).unwrap();
                if frame.flags & END_STREAM != 0 {
                    break;
                }
            }
            GOAWAY => panic!("GOAWAY {:?} after {got} bytes", frame.error_code()),
            _ => {}
        }
    }
    assert_eq!(got, MIB << 20);
}
