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
fn control_frame_floods_end_in_goaway() {
    let server = Server::start(&["--workers", "1"]);
    let floods = [
        ("WINDOW_UPDATE", frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes())),
        ("PRIORITY", frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16])),
        ("PING", frame(PING, 0, 0, &[7; 8])),
        ("SETTINGS", frame(SETTINGS, 0, 0, &[])),
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

/// Sends batch 0, 1, 2... (`batch(i)`) from a thread, at most `most` of them
/// (so the test stops by itself whatever the server does); returns how many
/// went out before the server closed the connection.
fn flood(h2: &RawH2, batch: impl Fn(usize) -> Vec<u8> + Send + 'static, most: usize) -> thread::JoinHandle<usize> {
    let mut sender = h2.stream.try_clone().unwrap();
    thread::spawn(move || {
        let mut sent = 0;
        while sent < most && std::io::Write::write_all(&mut sender, &batch(sent)).is_ok() {
            sent += 1;
        }
        sent
    })
}

/// What every flood test checks after it: the worker that took it is the
/// same process (it did not crash), it grew by less than `most_kib` of
/// memory, and it serves the next client.
fn still_serving(server: &Server, worker: nix::unistd::Pid, most_kib: u64, before_kib: u64, name: &str) {
    assert_eq!(server.workers(), vec![worker], "{name}: the worker lives on");
    let grew = peak_rss_kib(worker).saturating_sub(before_kib);
    assert!(grew < most_kib, "{name}: the worker's peak memory grew by {grew} KiB");
    assert_eq!(
        get(server.addr, "/").expect("served").status,
        200,
        "{name}: others served"
    );
}

/// Rapid reset (CVE-2023-44487): a client that opens streams and resets each
/// at once, so the server starts work it never has to finish, is told
/// `GOAWAY` `ENHANCE_YOUR_CALM` and closed long before its flood ends.
#[test]
fn rapid_reset_ends_in_goaway() {
    let server = Server::start(&["--workers", "1"]);
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    let before = peak_rss_kib(worker);
    let mut h2 = RawH2::start(server.addr, &[]);
    // 500 new streams per batch, each a request and its RST_STREAM (CANCEL);
    // at most 200 batches, 100,000 streams.
    let batches = 200;
    let batch = |i: usize| {
        let mut batch = Vec::new();
        for stream in (1000 * i as u32 + 1..1000 * (i as u32 + 1)).step_by(2) {
            batch.extend(request(stream, "/"));
            batch.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
        }
        batch
    };
    let flooding = flood(&h2, batch, batches);
    let frames = h2.read_until(Duration::from_secs(10), |f| f.kind == GOAWAY);
    let goaway = frames.iter().find(|f| f.kind == GOAWAY);
    assert_eq!(
        goaway.and_then(Frame::error_code),
        Some(ENHANCE_YOUR_CALM),
        "GOAWAY ENHANCE_YOUR_CALM: {:?}",
        goaway
    );
    let _ = h2.read_until(Duration::from_secs(5), |_| false);
    assert!(h2.closed, "closed");
    let sent = flooding.join().unwrap();
    assert!(sent < batches, "closed while the flood went on ({sent} batches sent)");
    still_serving(&server, worker, 50 << 10, before, "rapid reset");
}

/// CONTINUATION flood (CVE-2024-27316 and its kind): a header block that
/// never ends, in `CONTINUATION` frames without `END_HEADERS`, empty or full
/// of header fields, is cut off: the connection is closed, the worker's
/// memory stays bounded, and it serves the others meanwhile.
#[test]
fn continuation_floods_are_cut_off() {
    let server = Server::start(&["--workers", "1"]);
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    let before = peak_rss_kib(worker);
    // One field of 16 KiB less a little per frame: 64 MiB if it all were kept.
    let mut field = vec![0x00, 0x07];
    field.extend(b"x-flood");
    field.extend(hpack_int(16_000, 7, 0));
    field.extend(std::iter::repeat_n(b'a', 16_000));
    for (name, payload) in [("empty", Vec::new()), ("full", field)] {
        let mut h2 = RawH2::start(server.addr, &[]);
        let mut start = request(1, "/");
        start[4] = END_STREAM; // the same request without END_HEADERS
        h2.send(&start).unwrap();
        let one = frame(CONTINUATION, 0, 1, &payload);
        let per_batch = (64 << 10) / one.len().max(1) + 1;
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * per_batch).collect();
        // At most 4,096 batches: 256 MiB of fields, or 37 MB of empty frames.
        let flooding = flood(&h2, move |_| batch.clone(), 4096);
        let frames = h2.read_until(Duration::from_secs(20), |_| false);
        assert!(h2.closed, "{name} CONTINUATION flood: closed; read {frames:?}");
        assert!(
            !frames.iter().any(|f| f.kind == HEADERS),
            "{name} CONTINUATION flood: never answered: {frames:?}"
        );
        let sent = flooding.join().unwrap();
        assert!(sent < 4096, "{name} CONTINUATION flood: closed while it went on");
        still_serving(&server, worker, 50 << 10, before, &format!("{name} CONTINUATION flood"));
    }
}

/// HPACK bomb: a header block of a few KiB that decodes to megabytes, by
/// naming a large field of the dynamic table over and over, gets no response
/// but `431` (or a reset), and the worker's memory stays bounded.
#[test]
fn an_hpack_bomb_is_refused() {
    let server = Server::start(&["--workers", "1"]);
    let worker = server.wait_for_workers(1, Duration::from_secs(5))[0];
    let before = peak_rss_kib(worker);
    let mut h2 = RawH2::start(server.addr, &[]);
    let request_block = request(1, "/")[9..].to_vec();
    let mut block = request_block;
    // 4,000 bytes into the table (its default size is 4,096), then 16,000
    // one-byte references to it (index 62): 64 MB decoded from 20 KB.
    block.extend(hpack_indexed_literal("x-bomb", &[b'b'; 4_000]));
    block.extend(std::iter::repeat_n(0xbe, 16_000));
    let mut frames = Vec::new();
    let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { END_HEADERS } else { 0 };
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = last | if i == 0 { END_STREAM } else { 0 };
        frames.extend(frame(kind, flags, 1, chunk));
    }
    h2.send(&frames).unwrap();
    let answer = h2.read_until(Duration::from_secs(10), |f| {
        (f.stream == 1 && (f.kind == HEADERS || f.kind == RST_STREAM)) || f.kind == GOAWAY
    });
    let last = answer.last().expect("an answer");
    match last.kind {
        // A response head: anything but the service's 200 (h2 writes
        // `:status: 200` as 0x88, its index in HPACK's static table).
        HEADERS => assert_ne!(last.payload.first(), Some(&0x88), "the bomb was served: {last:?}"),
        RST_STREAM | GOAWAY => {}
        _ => unreachable!(),
    }
    still_serving(&server, worker, 50 << 10, before, "HPACK bomb");
}
