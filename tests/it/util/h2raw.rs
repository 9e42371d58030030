//! A raw HTTP/2 client for crafted frames: what no well-behaved client sends
//! (floods, a zero window, a preface and then silence).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const PING: u8 = 0x6;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame as read.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a `GOAWAY` or `RST_STREAM`.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// A frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    bytes.extend([kind, flags]);
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// `GET path` on `stream`, a whole request in one `HEADERS` frame (HPACK
/// without the dynamic table or Huffman coding).
pub fn request(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (index, value) in [(0x44u8, path), (0x41, "localhost")] {
        // Literal with incremental indexing, indexed name (:path, :authority).
        block.push(index);
        block.push(value.len() as u8);
        block.extend(value.as_bytes());
    }
    frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
}

/// An HPACK integer (RFC 7541 §5.1) with an `n`-bit prefix, its first byte
/// or-ed with `flags`.
pub fn hpack_int(value: usize, n: u32, flags: u8) -> Vec<u8> {
    let most = (1usize << n) - 1;
    if value < most {
        return vec![flags | value as u8];
    }
    let mut bytes = vec![flags | most as u8];
    let mut rest = value - most;
    while rest >= 128 {
        bytes.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    bytes.push(rest as u8);
    bytes
}

/// A literal header field with incremental indexing and a new name
/// (RFC 7541 §6.2.1): it enters the dynamic table, at index 62.
pub fn hpack_indexed_literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x40];
    bytes.extend(hpack_int(name.len(), 7, 0));
    bytes.extend(name.as_bytes());
    bytes.extend(hpack_int(value.len(), 7, 0));
    bytes.extend(value);
    bytes
}

/// A connection to the server, speaking frames.
pub struct RawH2 {
    pub stream: TcpStream,
    buffer: Vec<u8>,
    pub closed: bool,
}

impl RawH2 {
    pub fn connect(addr: SocketAddr) -> RawH2 {
        RawH2::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    pub fn from_stream(stream: TcpStream) -> RawH2 {
        stream.set_nodelay(true).unwrap();
        RawH2 {
            stream,
            buffer: Vec::new(),
            closed: false,
        }
    }

    /// The preface and an empty `SETTINGS` (what every client sends first), or
    /// one with `settings`.
    pub fn start(addr: SocketAddr, settings: &[(u16, u32)]) -> RawH2 {
        let mut h2 = RawH2::connect(addr);
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend(id.to_be_bytes());
            payload.extend(value.to_be_bytes());
        }
        let mut first = PREFACE.to_vec();
        first.extend(frame(SETTINGS, 0, 0, &payload));
        h2.send(&first).expect("send the preface");
        h2
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads frames until `done` says so, the server closes, or `within`
    /// passes; `SETTINGS` are acknowledged as they come. Returns every frame read.
    pub fn read_until(&mut self, within: Duration, mut done: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
        let deadline = Instant::now() + within;
        let mut frames = Vec::new();
        self.stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline && !self.closed {
            while let Some(frame) = self.next_buffered() {
                if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                    let _ = self.send(&self::frame(SETTINGS, ACK, 0, &[]));
                }
                let stop = done(&frame);
                frames.push(frame);
                if stop {
                    return frames;
                }
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => self.closed = true,
                Err(e) => panic!("read: {e}"),
            }
        }
        while let Some(frame) = self.next_buffered() {
            frames.push(frame);
        }
        frames
    }

    /// The next frame, within `within` (`SETTINGS` acknowledged as they
    /// come); `None` if the server closed first or nothing came in time.
    pub fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        let mut next = None;
        self.read_until(within, |frame| {
            next = Some(frame.clone());
            true
        });
        next
    }

    fn next_buffered(&mut self) -> Option<Frame> {
        if self.buffer.len() < 9 {
            return None;
        }
        let length = u32::from_be_bytes([0, self.buffer[0], self.buffer[1], self.buffer[2]]) as usize;
        if self.buffer.len() < 9 + length {
            return None;
        }
        let head: Vec<u8> = self.buffer.drain(..9 + length).collect();
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload: head[9..].to_vec(),
        })
    }
}
