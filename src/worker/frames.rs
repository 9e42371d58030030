//! HTTP/2 frames as they pass through a connection's socket, read by their
//! 9-byte headers (RFC 9113 §4.1): what hyper and the h2 crate do not bound,
//! and what the worker needs to end a connection in the protocol's own words.
//!
//! - **The control-frame budget.** Frames that ask the server for work but carry
//!   no request (`WINDOW_UPDATE`, `PRIORITY`, `PING`, `SETTINGS`, `RST_STREAM`,
//!   empty `DATA`, unknown types) are paid for from a balance that what the
//!   connection does for real fills up: its requests, the `DATA` frames the
//!   server sends it (a client downloading sends a `WINDOW_UPDATE` or two for
//!   them), and time. The balance has a ceiling, so an idle connection cannot
//!   save up for a flood. A client that overdraws it gets `GOAWAY` with
//!   `ENHANCE_YOUR_CALM` and the connection is closed, as h2 does for rapid
//!   resets and nginx for its "http2 flood detected".
//! - **The last stream**, so the worker's own `GOAWAY` names the last request
//!   it took, and never a later one than hyper's own `GOAWAY` named.
//! - **Frame boundaries of what was written**, so that the worker writes its
//!   `GOAWAY` only between two of hyper's frames, never inside one.
//! - **Whether a `DATA` frame was written**, for the sweep: a response that
//!   waits on flow control while nothing is sent is reset (see `streams`).

/// The balance a connection starts with: control frames it may send before
/// it has earned any.
const OPENING_BALANCE: i64 = 1_000;
/// The most a balance can hold: a burst of control frames is at most this.
const MOST_BALANCE: i64 = 10_000;
/// What each request (a `HEADERS` frame) earns: its `PRIORITY`, its
/// `RST_STREAM`, `WINDOW_UPDATE`s for its body.
const PER_REQUEST: i64 = 4;
/// What each KiB of `DATA` the server sends earns (a frame earns at least
/// this): the stream's and the connection's `WINDOW_UPDATE`, for a client that
/// gives the window back a KiB at a time (Go's gives it back at every 4 KiB
/// read, 8 frames a 16 KiB frame).
const PER_KIB_SENT: i64 = 2;
/// What each housekeeping tick (a quarter second) earns: the keep-alive
/// `PING`s of a long-lived connection (gRPC) never run out.
const PER_TICK: i64 = 1;

/// The client connection preface (RFC 9113 §3.4), before the first frame.
const PREFACE_LEN: u32 = 24;

/// `ENHANCE_YOUR_CALM` (RFC 9113 §7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
/// `NO_ERROR`.
pub const NO_ERROR: u32 = 0x0;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    length: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// What a [`Cursor`] finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// A frame's header.
    Head(Head),
    /// The last stream a `GOAWAY` names (the first 4 bytes of its payload).
    GoawayLastStream(u32),
}

/// Frame headers found in a byte stream fed to it a piece at a time.
#[derive(Debug, Default)]
struct Cursor {
    header: [u8; 9],
    /// Bytes of `header` collected so far.
    have: u8,
    /// Bytes of the current frame's payload (or the preface) still to pass.
    skip: u32,
    /// A `GOAWAY`'s last stream, collected as its payload passes.
    last_stream: [u8; 4],
    /// Bytes of `last_stream` still to collect.
    collecting: u8,
}

impl Cursor {
    fn after(skip: u32) -> Cursor {
        Cursor {
            skip,
            ..Cursor::default()
        }
    }

    /// Calls `each` with what is completed within `bytes`.
    #[inline]
    fn feed(&mut self, mut bytes: &[u8], mut each: impl FnMut(Found)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = bytes.len().min(self.skip as usize);
                if self.collecting > 0 {
                    self.collect(&bytes[..n], &mut each);
                }
                self.skip -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            // A whole header in `bytes` (the usual case): read in place.
            let header = match (self.have, bytes.first_chunk::<9>()) {
                (0, Some(header)) => {
                    bytes = &bytes[9..];
                    *header
                }
                _ => {
                    let have = usize::from(self.have);
                    let n = bytes.len().min(9 - have);
                    self.header[have..have + n].copy_from_slice(&bytes[..n]);
                    self.have += n as u8;
                    bytes = &bytes[n..];
                    if self.have < 9 {
                        return;
                    }
                    self.have = 0;
                    self.header
                }
            };
            let head = Head {
                length: u32::from_be_bytes([0, header[0], header[1], header[2]]),
                kind: header[3],
                flags: header[4],
                stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            };
            self.skip = head.length;
            if head.kind == GOAWAY && head.length >= 4 {
                self.collecting = 4;
            }
            each(Found::Head(head));
        }
    }

    /// The next payload bytes of a `GOAWAY`, toward its last stream.
    fn collect(&mut self, payload: &[u8], each: &mut impl FnMut(Found)) {
        let at = 4 - usize::from(self.collecting);
        let n = payload.len().min(usize::from(self.collecting));
        self.last_stream[at..at + n].copy_from_slice(&payload[..n]);
        self.collecting -= n as u8;
        if self.collecting == 0 {
            each(Found::GoawayLastStream(
                u32::from_be_bytes(self.last_stream) & 0x7fff_ffff,
            ));
        }
    }

    /// Between two frames: a frame written now would not split one.
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }
}

/// What one HTTP/2 connection's frames say, both ways.
#[derive(Debug)]
pub struct Frames {
    read: Cursor,
    written: Cursor,
    /// The highest stream a request was opened on, in what hyper was given.
    last_stream: u32,
    /// The lowest last stream a `GOAWAY` of hyper's named: the worker's own
    /// may not name a later one (RFC 9113 §6.8).
    goaway_named: u32,
    balance: i64,
    /// The housekeeping tick of the last read (time's part of the balance).
    last_tick: u32,
}

/// The client overdrew its control-frame balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    /// Control frames in the read that overdrew it.
    pub control: u64,
    /// The balance before that read.
    pub balance: i64,
}

impl Frames {
    /// A connection whose first bytes (read next) are the client's preface, at tick `now`.
    pub fn new(now: u32) -> Frames {
        Frames {
            read: Cursor::after(PREFACE_LEN),
            written: Cursor::default(),
            last_stream: 0,
            goaway_named: u32::MAX,
            balance: OPENING_BALANCE,
            last_tick: now,
        }
    }

    /// Bytes read from the client, at tick `now`. `Err` once it has overdrawn
    /// its balance: the connection is to end with `ENHANCE_YOUR_CALM` (and
    /// these bytes are not for hyper).
    pub fn read(&mut self, bytes: &[u8], now: u32) -> Result<(), Flood> {
        let (mut control, mut earned, mut last) = (0i64, 0i64, self.last_stream);
        self.read.feed(bytes, |found| {
            let Found::Head(head) = found else { return };
            match head.kind {
                HEADERS => {
                    earned += PER_REQUEST;
                    last = last.max(head.stream);
                }
                DATA if head.length > 0 || head.flags & END_STREAM != 0 => {}
                CONTINUATION | GOAWAY | PUSH_PROMISE => {}
                _ => control += 1,
            }
        });
        let ticks = i64::from(now.wrapping_sub(self.last_tick));
        self.last_tick = now;
        let before = (self.balance + PER_TICK * ticks + earned).min(MOST_BALANCE);
        self.balance = before - control;
        if self.balance < 0 {
            return Err(Flood {
                control: control as u64,
                balance: before,
            });
        }
        self.last_stream = last;
        Ok(())
    }

    /// Bytes written to the client; true if they held a `DATA` frame with a payload.
    pub fn written(&mut self, bytes: &[u8]) -> bool {
        let (mut kib, mut named) = (0, self.goaway_named);
        self.written.feed(bytes, |found| match found {
            Found::Head(head) if head.kind == DATA && head.length > 0 => kib += i64::from(head.length.div_ceil(1024)),
            Found::Head(_) => {}
            Found::GoawayLastStream(last) => named = named.min(last),
        });
        self.goaway_named = named;
        self.balance = (self.balance + PER_KIB_SENT * kib).min(MOST_BALANCE);
        kib > 0
    }

    /// The `GOAWAY` frame that ends this connection with `code`, if one can be
    /// written now without splitting a frame of hyper's.
    pub fn goaway(&self, code: u32) -> Option<[u8; 17]> {
        if !self.written.at_boundary() {
            return None;
        }
        let last = self.last_stream.min(self.goaway_named);
        let mut frame = [0u8; 17];
        frame[..9].copy_from_slice(&[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
        frame[9..13].copy_from_slice(&last.to_be_bytes());
        frame[13..].copy_from_slice(&code.to_be_bytes());
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut bytes = len.to_be_bytes()[1..].to_vec();
        bytes.extend([kind, flags]);
        bytes.extend(stream.to_be_bytes());
        bytes.extend(payload);
        bytes
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const WINDOW_UPDATE: u8 = 0x8;

    #[test]
    fn frames_are_found_whatever_the_reads_split() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(0x4, 0, 0, &[0; 6])); // SETTINGS
        stream.extend(frame(HEADERS, 0x5, 7, &[0x82, 0x86, 0x84]));
        stream.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
        stream.extend(frame(0x6, 0x1, 0, &[0; 8])); // PING ACK
        for piece in [1, 2, 5, 9, 1000] {
            let mut frames = Frames::new(0);
            for chunk in stream.chunks(piece) {
                frames.read(chunk, 0).unwrap();
            }
            assert_eq!(frames.last_stream, 7, "pieces of {piece}");
            let spent = OPENING_BALANCE + PER_REQUEST - frames.balance;
            assert_eq!(spent, 3, "SETTINGS, WINDOW_UPDATE and the PING, pieces of {piece}");
        }
    }

    #[test]
    fn a_window_update_flood_overdraws_and_requests_data_and_time_earn_more() {
        let update = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1]);
        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        for _ in 0..OPENING_BALANCE {
            frames.read(&update, 0).unwrap();
        }
        let flood = frames.read(&update, 0).unwrap_err();
        assert_eq!(flood, Flood { control: 1, balance: 0 });

        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        frames.read(&frame(HEADERS, 0x5, 1, &[0x82]), 0).unwrap();
        assert!(frames.written(&frame(DATA, 0, 1, b"hello")));
        assert!(
            !frames.written(&frame(DATA, END_STREAM, 1, b"")),
            "an empty DATA earns nothing"
        );
        for _ in 0..OPENING_BALANCE + PER_REQUEST + PER_KIB_SENT {
            frames.read(&update, 0).unwrap();
        }
        assert!(frames.read(&update, 0).is_err());
        let mut frames = Frames::new(0);
        for _ in 0..OPENING_BALANCE {
            frames.read(&update, 0).unwrap();
        }
        assert!(frames.read(&update, 10).is_ok(), "ten ticks later, ten more");
    }

    #[test]
    fn go_giving_the_window_back_every_4_kib_is_no_flood() {
        // Go's client: a stream and a connection WINDOW_UPDATE per 4 KiB read.
        let mut updates = frame(WINDOW_UPDATE, 0, 1, &4096u32.to_be_bytes());
        updates.extend(frame(WINDOW_UPDATE, 0, 0, &4096u32.to_be_bytes()));
        let data = frame(DATA, 0, 1, &[7; 16384]);
        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        frames.read(&frame(HEADERS, 0x5, 1, &[0x82]), 0).unwrap();
        for _ in 0..100_000 {
            frames.written(&data);
            for _ in 0..4 {
                frames.read(&updates, 0).unwrap();
            }
        }
    }

    #[test]
    fn an_idle_connection_cannot_save_up_for_a_flood() {
        let update = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1]);
        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        // A day later: the balance is at its ceiling, not a day's worth.
        let burst: Vec<u8> = update
            .iter()
            .copied()
            .cycle()
            .take(update.len() * (MOST_BALANCE as usize + 1))
            .collect();
        assert!(frames.read(&burst, 345_600).is_err());
    }

    #[test]
    fn hyper_gets_no_stream_of_a_read_that_overdrew() {
        let update = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1]);
        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        frames.read(&frame(HEADERS, 0x5, 1, &[0x82]), 0).unwrap();
        let mut flood: Vec<u8> = update.iter().copied().cycle().take(update.len() * 2000).collect();
        flood.extend(frame(HEADERS, 0x5, 3, &[0x82]));
        assert!(frames.read(&flood, 0).is_err());
        let goaway = frames.goaway(ENHANCE_YOUR_CALM).unwrap();
        assert_eq!(goaway[9..13], 1u32.to_be_bytes(), "stream 3 was never hyper's");
    }

    #[test]
    fn empty_data_without_end_stream_is_a_control_frame() {
        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        frames.read(&frame(DATA, 0, 1, b""), 0).unwrap();
        frames.read(&frame(DATA, END_STREAM, 1, b""), 0).unwrap();
        frames.read(&frame(DATA, 0, 1, b"x"), 0).unwrap();
        assert_eq!(frames.balance, OPENING_BALANCE - 1);
    }

    #[test]
    fn a_goaway_is_written_only_between_frames_and_never_past_hypers() {
        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        frames.read(&frame(HEADERS, 0x5, 3, &[0x82]), 0).unwrap();
        let data = frame(DATA, 0, 3, &[1; 100]);
        frames.written(&data[..50]);
        assert_eq!(frames.goaway(NO_ERROR), None, "inside a DATA frame");
        frames.written(&data[50..]);
        let goaway = frames.goaway(ENHANCE_YOUR_CALM).unwrap();
        assert_eq!(goaway.to_vec(), frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0xb]));
        // hyper's final GOAWAY named stream 1 (split across two writes);
        // a later HEADERS read does not raise ours past it.
        let hypers = frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]);
        frames.written(&hypers[..11]);
        frames.written(&hypers[11..]);
        frames.read(&frame(HEADERS, 0x5, 5, &[0x82]), 0).unwrap();
        assert_eq!(frames.goaway(NO_ERROR).unwrap()[9..13], 1u32.to_be_bytes());
    }
}
