//! HTTP/2 frames as they pass through a connection's socket, read by their
//! 9-byte headers only (RFC 9113 §4.1): what hyper and the h2 crate do not
//! bound, and what the worker needs to end a connection in the protocol's own
//! words.
//!
//! - **The control-frame budget.** Frames that ask the server for work but carry
//!   no request (`WINDOW_UPDATE`, `PRIORITY`, `PING`, `SETTINGS`, `RST_STREAM`,
//!   empty `DATA`, unknown types) are counted against an allowance that grows
//!   with what the connection does for real: its requests, the `DATA` frames
//!   the server sends it (a client downloading sends a `WINDOW_UPDATE` or two
//!   for them), and its age. A client past it gets `GOAWAY` with
//!   `ENHANCE_YOUR_CALM` and the connection is closed, as h2 does for rapid
//!   resets and nginx for its "http2 flood detected".
//! - **The last stream**, so the worker's own `GOAWAY` names the last request
//!   it took.
//! - **Frame boundaries of what was written**, so that the worker writes its
//!   `GOAWAY` only between two of hyper's frames, never inside one.
//! - **When a `DATA` frame was last written**, for the sweep: a response that has
//!   waited that long on flow control is reset (see `streams`).

/// Control frames a connection may send before it has earned any.
const BASE_ALLOWANCE: u64 = 1_000;
/// Control frames each request (a `HEADERS` frame) earns: its `PRIORITY`, its
/// `RST_STREAM`, `WINDOW_UPDATE`s for its body.
const PER_REQUEST: u64 = 4;
/// Control frames each `DATA` frame the server sends earns: the stream's and the
/// connection's `WINDOW_UPDATE`, for a client that acknowledges every frame.
const PER_DATA_SENT: u64 = 2;
/// Control frames each housekeeping tick (a quarter second) of the
/// connection's life earns: keep-alive `PING`s of a long-lived connection
/// (gRPC) never run out.
const PER_TICK: u64 = 1;

/// The client connection preface (RFC 9113 §3.4), before the first frame.
const PREFACE_LEN: u32 = 24;

/// `ENHANCE_YOUR_CALM` (RFC 9113 §7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
/// `NO_ERROR`.
pub const NO_ERROR: u32 = 0x0;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const PUSH_PROMISE: u8 = 0x5;
const END_STREAM: u8 = 0x1;

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    length: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Frame headers found in a byte stream fed to it a piece at a time.
#[derive(Debug, Default)]
struct Cursor {
    header: [u8; 9],
    /// Bytes of `header` collected so far.
    have: u8,
    /// Bytes of the current frame's payload (or the preface) still to pass.
    skip: u32,
}

impl Cursor {
    fn after(skip: u32) -> Cursor {
        Cursor {
            skip,
            ..Cursor::default()
        }
    }

    /// Calls `each` with every frame header completed within `bytes`.
    fn feed(&mut self, mut bytes: &[u8], mut each: impl FnMut(Head)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = bytes.len().min(self.skip as usize);
                self.skip -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let have = usize::from(self.have);
            let n = bytes.len().min(9 - have);
            self.header[have..have + n].copy_from_slice(&bytes[..n]);
            self.have += n as u8;
            bytes = &bytes[n..];
            if self.have == 9 {
                let h = &self.header;
                let head = Head {
                    length: u32::from_be_bytes([0, h[0], h[1], h[2]]),
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                };
                self.have = 0;
                self.skip = head.length;
                each(head);
            }
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
    /// The highest stream a request was opened on.
    last_stream: u32,
    control: u64,
    earned: u64,
    /// The housekeeping tick the connection started at.
    born: u32,
}

/// The client went past its control-frame allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    pub control: u64,
    pub allowed: u64,
}

impl Frames {
    /// A connection whose first bytes (read next) are the client's preface.
    pub fn new(now: u32) -> Frames {
        Frames {
            read: Cursor::after(PREFACE_LEN),
            written: Cursor::default(),
            last_stream: 0,
            control: 0,
            earned: 0,
            born: now,
        }
    }

    /// Bytes read from the client. `Err` once it is past its allowance (as of
    /// tick `now`): the connection is to end with `ENHANCE_YOUR_CALM`.
    pub fn read(&mut self, bytes: &[u8], now: u32) -> Result<(), Flood> {
        let (mut control, mut earned, mut last) = (0, 0, self.last_stream);
        self.read.feed(bytes, |head| match head.kind {
            HEADERS => {
                earned += PER_REQUEST;
                last = last.max(head.stream);
            }
            DATA if head.length > 0 || head.flags & END_STREAM != 0 => {}
            CONTINUATION | GOAWAY | PUSH_PROMISE => {}
            _ => control += 1,
        });
        self.last_stream = last;
        self.earned += earned;
        self.control += control;
        let allowed = BASE_ALLOWANCE + self.earned + PER_TICK * u64::from(now.wrapping_sub(self.born));
        match self.control > allowed {
            true => Err(Flood {
                control: self.control,
                allowed,
            }),
            false => Ok(()),
        }
    }

    /// Bytes written to the client; true if they held a `DATA` frame with a payload.
    pub fn written(&mut self, bytes: &[u8]) -> bool {
        let mut data = 0;
        self.written.feed(bytes, |head| {
            if head.kind == DATA && head.length > 0 {
                data += 1;
            }
        });
        self.earned += PER_DATA_SENT * data;
        data > 0
    }

    /// The `GOAWAY` frame that ends this connection with `code`, if one can be
    /// written now without splitting a frame of hyper's.
    pub fn goaway(&self, code: u32) -> Option<[u8; 17]> {
        if !self.written.at_boundary() {
            return None;
        }
        let mut frame = [0u8; 17];
        frame[..9].copy_from_slice(&[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
        frame[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
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

    #[test]
    fn frames_are_found_whatever_the_reads_split() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(0x4, 0, 0, &[0; 6])); // SETTINGS
        stream.extend(frame(HEADERS, 0x5, 7, &[0x82, 0x86, 0x84]));
        stream.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
        for piece in [1, 2, 5, 9, 1000] {
            let mut frames = Frames::new(0);
            for chunk in stream.chunks(piece) {
                frames.read(chunk, 0).unwrap();
            }
            assert_eq!(frames.last_stream, 7, "pieces of {piece}");
            assert_eq!(frames.control, 2, "SETTINGS and WINDOW_UPDATE, pieces of {piece}");
            assert_eq!(frames.earned, PER_REQUEST);
        }
    }

    #[test]
    fn a_window_update_flood_runs_out_and_requests_and_data_earn_more() {
        let update = frame(0x8, 0, 0, &[0, 0, 0, 1]);
        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        for _ in 0..BASE_ALLOWANCE {
            frames.read(&update, 0).unwrap();
        }
        let flood = frames.read(&update, 0).unwrap_err();
        assert_eq!(
            flood,
            Flood {
                control: BASE_ALLOWANCE + 1,
                allowed: BASE_ALLOWANCE
            }
        );

        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        frames.read(&frame(HEADERS, 0x5, 1, &[0x82]), 0).unwrap();
        assert!(frames.written(&frame(DATA, 0, 1, b"hello")));
        assert!(
            !frames.written(&frame(DATA, END_STREAM, 1, b"")),
            "an empty DATA earns nothing"
        );
        for _ in 0..BASE_ALLOWANCE + PER_REQUEST + PER_DATA_SENT {
            frames.read(&update, 0).unwrap();
        }
        assert!(frames.read(&update, 0).is_err());
        assert!(frames.read(&update, 10).is_ok(), "ten ticks later, ten more");
    }

    #[test]
    fn empty_data_without_end_stream_is_a_control_frame() {
        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        frames.read(&frame(DATA, 0, 1, b""), 0).unwrap();
        frames.read(&frame(DATA, END_STREAM, 1, b""), 0).unwrap();
        frames.read(&frame(DATA, 0, 1, b"x"), 0).unwrap();
        assert_eq!(frames.control, 1);
    }

    #[test]
    fn a_goaway_is_written_only_between_frames() {
        let mut frames = Frames::new(0);
        frames.read(PREFACE, 0).unwrap();
        frames.read(&frame(HEADERS, 0x5, 3, &[0x82]), 0).unwrap();
        let data = frame(DATA, 0, 3, &[1; 100]);
        frames.written(&data[..50]);
        assert_eq!(frames.goaway(NO_ERROR), None, "inside a DATA frame");
        frames.written(&data[50..]);
        let goaway = frames.goaway(ENHANCE_YOUR_CALM).unwrap();
        assert_eq!(goaway.to_vec(), frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0xb]));
    }
}
