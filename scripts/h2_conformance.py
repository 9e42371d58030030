#!/usr/bin/env python3
"""h2_conformance.py — HTTP/2 conformance checks against a server on 127.0.0.1,
with Python's `h2` package as the client (and raw frames where a check must
send what `h2` refuses to): the connection preface and SETTINGS, PING, flow
control over a large request body, CONTINUATION, trailers, HEAD, concurrent
streams, RST_STREAM and PRIORITY, unknown frames, and the errors RFC 9113
requires for malformed requests (a stream error) and broken framing (a
connection error). Each check opens its own connection.

Usage: scripts/h2_conformance.py PORT    (the server answers GET / with 200)
Prints one line per check; exits 1 if any failed. Needs `pip install h2`.
"""
import socket
import struct
import sys

try:
    import h2.config
    import h2.connection
    import h2.events
    import hpack
except ImportError as missing:
    sys.exit(f"h2_conformance: {missing}: install Python's h2 package (pip install h2)")

HOST = "127.0.0.1"  # only ever the local machine
TIMEOUT = 5.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113, 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
# Error codes (RFC 9113, 7).
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def request_headers(path="/", method="GET"):
    return [(":method", method), (":scheme", "http"), (":authority", "localhost"), (":path", path)]


class Client:
    """One connection, driven by `h2` (its state and its checks of what the
    server sends), with `raw()` for frames it would refuse to send."""

    def __init__(self, port, validate=True):
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=validate,
                                           normalize_outbound_headers=validate)
        self.conn = h2.connection.H2Connection(config=config)
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def raw(self, data):
        """Sends bytes as they are, past `h2`'s state (after its pending output)."""
        self.flush()
        self.sock.sendall(data)

    def events(self):
        """The events of the next read; [] once the server closed."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return []
        if not data:
            return []
        try:
            events = self.conn.receive_data(data)
        except Exception as err:  # the server sent what h2 calls a protocol violation
            raise AssertionError(f"the server broke the protocol: {err!r}")
        self.flush()
        return events

    def until(self, done, what):
        """Reads until `done(event)` holds for one event; returns the events seen."""
        seen = []
        while True:
            events = self.events()
            if not events:
                raise AssertionError(f"the connection closed before {what}; saw {names(seen)}")
            seen += events
            if any(done(e) for e in events):
                return seen

    def response(self, stream):
        """(status, headers, body) of `stream`, read to its end."""
        status, headers, body = None, [], b""
        while True:
            events = self.events()
            if not events:
                raise AssertionError(f"the connection closed before stream {stream} ended")
            for e in events:
                if getattr(e, "stream_id", None) != stream:
                    continue
                if isinstance(e, h2.events.ResponseReceived):
                    headers = [(k.decode(), v.decode()) for k, v in e.headers]
                    status = dict(headers)[":status"]
                elif isinstance(e, h2.events.DataReceived):
                    body += e.data
                    self.conn.acknowledge_received_data(e.flow_controlled_length, stream)
                elif isinstance(e, h2.events.StreamReset):
                    raise AssertionError(f"stream {stream} was reset ({e.error_code!r})")
                elif isinstance(e, h2.events.StreamEnded):
                    self.flush()
                    return status, headers, body
            self.flush()

    def get(self, path="/"):
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, request_headers(path), end_stream=True)
        self.flush()
        return self.response(stream)

    def close(self):
        self.sock.close()


class Raw:
    """One connection spoken in raw frames, for requests `h2` would refuse to
    send (or would track as streams it did not open): the preface, empty
    SETTINGS, and an ACK of the server's."""

    def __init__(self, port):
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.buffer = b""
        self.decoder = hpack.Decoder()

    def send(self, data):
        self.sock.sendall(data)

    def next_frame(self):
        """(type, flags, stream, payload), or None once the server closed."""
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    kind, flags = self.buffer[3], self.buffer[4]
                    stream = struct.unpack(">I", self.buffer[5:9])[0] & 0x7FFFFFFF
                    payload, self.buffer = self.buffer[9:9 + length], self.buffer[9 + length:]
                    if kind == SETTINGS and not flags & ACK:
                        self.send(frame(SETTINGS, ACK, 0))
                    if kind == HEADERS:
                        payload = dict(self.decoder.decode(payload))  # no padding or priority: servers send neither
                    return kind, flags, stream, payload
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buffer += data

    def until(self, done, what):
        """Frames until one for which `done` holds (that one included)."""
        seen = []
        while True:
            f = self.next_frame()
            if f is None:
                raise AssertionError(f"the connection closed before {what}; saw frame types {[x[0] for x in seen]}")
            seen.append(f)
            if done(f):
                return seen

    def answer(self, stream):
        """(status, body) of `stream`, read to its end; a reset or GOAWAY fails."""
        status, body = None, b""
        for kind, flags, s, payload in self.until(
                lambda f: f[0] == GOAWAY or (f[2] == stream and (f[0] == RST_STREAM or f[1] & END_STREAM)),
                f"the end of stream {stream}"):
            if kind == GOAWAY:
                raise AssertionError(f"GOAWAY {struct.unpack('>II', payload[:8])}")
            if s != stream:
                continue
            if kind == RST_STREAM:
                raise AssertionError(f"stream {stream} reset with {struct.unpack('>I', payload)[0]}")
            if kind == HEADERS:
                status = payload.get(":status") or payload.get(b":status")
            elif kind == DATA:
                body += payload
        return (status.decode() if isinstance(status, bytes) else status), body

    def close(self):
        self.sock.close()


def names(events):
    return [type(e).__name__ for e in events]


def expect_stream_error(port, block, code=PROTOCOL_ERROR):
    """A request whose header block is `block` (already HPACK-encoded): RFC 9113
    calls it malformed, a stream error (RST_STREAM), which an endpoint may
    treat as a connection error (GOAWAY) with the same code. After a reset,
    the connection must go on serving."""
    c = Raw(port)
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    seen = c.until(lambda f: f[0] == GOAWAY or (f[2] == 1 and f[0] in (RST_STREAM, HEADERS)), "an answer to stream 1")
    kind, _, _, payload = seen[-1]
    assert kind != HEADERS, f"answered {payload}, not refused"
    got = struct.unpack(">I", payload[:4])[0] if kind == RST_STREAM else struct.unpack(">II", payload[:8])[1]
    assert got == code, f"{'RST_STREAM' if kind == RST_STREAM else 'GOAWAY'} with {got}, not {code}"
    if kind == RST_STREAM:
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, encoded(request_headers())))
        status, _ = c.answer(3)
        assert status == "200", f"the connection stopped serving after the reset: {status}"
    c.close()


def expect_goaway(port, data, code):
    """Frames the server must answer with a connection error: GOAWAY with `code`."""
    c = Client(port, validate=False)
    c.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged), "the server's SETTINGS")
    c.raw(data)
    seen = []
    while True:
        events = c.events()
        seen += events
        goaways = [e for e in seen if isinstance(e, h2.events.ConnectionTerminated)]
        if goaways:
            assert goaways[0].error_code == code, f"GOAWAY with {goaways[0].error_code!r}, not {code}"
            break
        assert events, f"closed without a GOAWAY; saw {names(seen)}"
    c.close()


def encoded(headers):
    return hpack.Encoder().encode(headers)


CHECKS = []


def check(f):
    CHECKS.append(f)
    return f


@check
def settings_are_exchanged_and_acknowledged(port):
    c = Client(port)
    seen = c.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged), "the ACK of our SETTINGS")
    assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in seen), names(seen)
    c.close()


@check
def ping_is_answered_with_its_payload(port):
    c = Client(port)
    c.conn.ping(b"12345678")
    c.flush()
    seen = c.until(lambda e: isinstance(e, h2.events.PingAckReceived), "the PING's ACK")
    acks = [e for e in seen if isinstance(e, h2.events.PingAckReceived)]
    assert acks[0].ping_data == b"12345678", acks[0].ping_data
    c.close()


@check
def a_get_is_answered(port):
    c = Client(port)
    status, headers, body = c.get()
    assert status == "200", status
    assert body.startswith(b"Hello from worker"), body
    assert dict(headers).get("content-length") == str(len(body)), headers
    c.close()


@check
def a_head_has_no_body(port):
    c = Raw(port)
    c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, encoded(request_headers(method="HEAD"))))
    status, body = c.answer(1)
    assert status == "200" and body == b"", (status, body)
    c.close()


@check
def concurrent_streams_are_all_answered(port):
    c = Client(port)
    streams = []
    for _ in range(50):
        stream = c.conn.get_next_available_stream_id()
        c.conn.send_headers(stream, request_headers(), end_stream=True)
        streams.append(stream)
    c.flush()
    answered, ended = {}, set()
    while len(ended) < len(streams):
        events = c.events()
        assert events, f"closed with {len(ended)} of {len(streams)} streams answered"
        for e in events:
            if isinstance(e, h2.events.ResponseReceived):
                answered[e.stream_id] = dict(e.headers)[b":status"]
            elif isinstance(e, h2.events.DataReceived):
                c.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                ended.add(e.stream_id)
            elif isinstance(e, h2.events.StreamReset):
                raise AssertionError(f"stream {e.stream_id} reset")
        c.flush()
    assert set(answered) == set(streams) and set(answered.values()) == {b"200"}, answered
    c.close()


@check
def a_large_body_flows_past_the_initial_window(port):
    """1 MiB of request body: far past the 65,535 bytes of the initial windows,
    so it arrives only if the server gives window back as it reads."""
    c = Client(port)
    c.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged), "the server's SETTINGS")
    stream = c.conn.get_next_available_stream_id()
    c.conn.send_headers(stream, request_headers(method="POST"))
    left = 1 << 20
    while left:
        room = min(c.conn.local_flow_control_window(stream), c.conn.max_outbound_frame_size, left)
        if room == 0:
            events = c.events()
            assert events, f"closed with {left} bytes of the body unsent"
            assert not any(isinstance(e, h2.events.StreamReset) for e in events), names(events)
            continue
        c.conn.send_data(stream, b"x" * room)
        left -= room
        c.flush()
    c.conn.end_stream(stream)
    c.flush()
    status, _, _ = c.response(stream)
    assert status == "405", status  # the default app answers GET and HEAD only
    c.close()


@check
def trailers_end_a_request(port):
    c = Client(port)
    stream = c.conn.get_next_available_stream_id()
    c.conn.send_headers(stream, request_headers(method="POST"))
    c.conn.send_data(stream, b"body")
    c.conn.send_headers(stream, [("x-checksum", "1234")], end_stream=True)
    c.flush()
    status, _, _ = c.response(stream)
    assert status == "405", status
    c.close()


@check
def a_header_block_in_continuation_frames_is_read_whole(port):
    c = Raw(port)
    block = encoded(request_headers() + [("x-filler", "f" * 3000)])
    parts = [block[i:i + 1000] for i in range(0, len(block), 1000)]
    data = frame(HEADERS, END_STREAM, 1, parts[0])
    for i, part in enumerate(parts[1:], 1):
        data += frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, 1, part)
    c.send(data)
    status, body = c.answer(1)
    assert status == "200" and body.startswith(b"Hello"), (status, body)
    c.close()


@check
def a_reset_stream_leaves_the_connection_serving(port):
    c = Client(port)
    stream = c.conn.get_next_available_stream_id()
    c.conn.send_headers(stream, request_headers(method="POST"))
    c.conn.send_data(stream, b"partial")
    c.conn.reset_stream(stream, error_code=0x8)  # CANCEL
    c.flush()
    status, _, _ = c.get()
    assert status == "200", status
    c.close()


@check
def priority_and_unknown_frames_are_ignored(port):
    c = Client(port)
    c.raw(frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 15))  # stream 1 depends on 0, weight 16
          + frame(0xfa, 0, 0, b"unknown frame type"))
    status, _, _ = c.get()
    assert status == "200", status
    c.close()


@check
def an_uppercase_field_name_is_a_stream_error(port):
    expect_stream_error(port, encoded(request_headers() + [("X-Upper", "1")]))


@check
def a_connection_specific_field_is_a_stream_error(port):
    expect_stream_error(port, encoded(request_headers() + [("connection", "keep-alive")]))


@check
def a_missing_path_is_a_stream_error(port):
    expect_stream_error(port, encoded(request_headers()[:3]))


@check
def a_pseudo_header_after_a_field_is_a_stream_error(port):
    headers = request_headers()
    expect_stream_error(port, encoded(headers[:3] + [("user-agent", "x")] + headers[3:]))


@check
def headers_on_an_even_stream_are_a_connection_error(port):
    expect_goaway(port, frame(HEADERS, END_HEADERS | END_STREAM, 2, encoded(request_headers())), PROTOCOL_ERROR)


@check
def data_on_stream_0_is_a_connection_error(port):
    expect_goaway(port, frame(DATA, 0, 0, b"data"), PROTOCOL_ERROR)


@check
def a_zero_window_update_on_the_connection_is_a_connection_error(port):
    expect_goaway(port, frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), PROTOCOL_ERROR)


@check
def an_initial_window_over_2_31_is_a_flow_control_error(port):
    expect_goaway(port, frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 1 << 31)), FLOW_CONTROL_ERROR)


@check
def a_ping_of_the_wrong_length_is_a_frame_size_error(port):
    expect_goaway(port, frame(PING, 0, 0, b"123456"), FRAME_SIZE_ERROR)


@check
def a_settings_ack_with_a_payload_is_a_frame_size_error(port):
    expect_goaway(port, frame(SETTINGS, ACK, 0, struct.pack(">HI", 0x3, 100)), FRAME_SIZE_ERROR)


@check
def a_frame_over_the_max_frame_size_is_a_frame_size_error(port):
    c = Client(port)
    stream = c.conn.get_next_available_stream_id()
    c.conn.send_headers(stream, request_headers(method="POST"))
    c.flush()
    c.close()
    expect_goaway(port, frame(HEADERS, END_HEADERS, 1, encoded(request_headers(method="POST")))
                  + frame(DATA, 0, 1, b"x" * (16384 + 1)), FRAME_SIZE_ERROR)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    port = int(sys.argv[1])
    failed = 0
    for f in CHECKS:
        try:
            f(port)
            print(f"ok   {f.__name__}")
        except (AssertionError, OSError) as err:
            failed += 1
            print(f"FAIL {f.__name__}: {err}")
    print(f"{len(CHECKS) - failed} of {len(CHECKS)} checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
