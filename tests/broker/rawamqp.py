"""A tiny raw AMQP 0-9-1 client for malformed-input tests.

It speaks frames over a plain socket with struct only, so a test can send any
bytes it likes (broken frame ends, truncated arguments, frames out of order)
and read back exactly what the broker answers. Every socket operation has a
timeout. Only the few methods the raw tests need are encoded here.

    c = RawConn(host, port)
    c.handshake()                       # header, start-ok, tune-ok, open
    c.send_method(1, CHANNEL_OPEN, b"\\x00")
    ch, cls, mth, args = c.read_method()
    code, text, cls, mth = c.expect_connection_close()
"""

import socket
import struct
import time

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = 0xCE
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# (class id, method id) pairs
CONNECTION_START, CONNECTION_START_OK = (10, 10), (10, 11)
CONNECTION_TUNE, CONNECTION_TUNE_OK = (10, 30), (10, 31)
CONNECTION_OPEN, CONNECTION_OPEN_OK = (10, 40), (10, 41)
CONNECTION_CLOSE, CONNECTION_CLOSE_OK = (10, 50), (10, 51)
CHANNEL_OPEN, CHANNEL_OPEN_OK = (20, 10), (20, 11)
CHANNEL_CLOSE, CHANNEL_CLOSE_OK = (20, 40), (20, 41)
EXCHANGE_DECLARE = (40, 10)
QUEUE_DECLARE, QUEUE_DECLARE_OK = (50, 10), (50, 11)
BASIC_PUBLISH = (60, 40)
BASIC_GET, BASIC_GET_OK, BASIC_GET_EMPTY = (60, 70), (60, 71), (60, 72)
BASIC_CLASS = 60

# client-properties capabilities: the broker answers auth failures with
# connection.close only to clients that advertise authentication_failure_close.
DEFAULT_CLIENT_PROPERTIES = {
    "product": "warren-rawamqp",
    "capabilities": {"authentication_failure_close": True},
}


class Closed(Exception):
    """The broker closed the socket (EOF or reset)."""


class Timeout(Exception):
    """Nothing (or not enough) arrived before the deadline."""


# ---------------------------------------------------------------- encoders

def octet(v):
    return struct.pack(">B", v)


def short(v):
    return struct.pack(">H", v)


def long_(v):
    return struct.pack(">I", v)


def longlong(v):
    return struct.pack(">Q", v)


def shortstr(s):
    b = s.encode() if isinstance(s, str) else s
    return octet(len(b)) + b


def longstr(s):
    b = s.encode() if isinstance(s, str) else s
    return long_(len(b)) + b


def bits(*flags):
    """Packs up to 8 consecutive bit arguments into one octet, first = bit 0."""
    v = 0
    for i, f in enumerate(flags):
        if f:
            v |= 1 << i
    return octet(v)


def field_value(v):
    if isinstance(v, bool):
        return b"t" + octet(1 if v else 0)
    if isinstance(v, int):
        return b"l" + struct.pack(">q", v)
    if isinstance(v, (str, bytes)):
        return b"S" + longstr(v)
    if isinstance(v, dict):
        return b"F" + table(v)
    raise TypeError("unsupported field value %r" % (v,))


def table_body(d):
    """A field table's entries without the 4-octet length (AMQPLAIN's response)."""
    return b"".join(shortstr(k) + field_value(v) for k, v in d.items())


def table(d):
    body = table_body(d)
    return long_(len(body)) + body


def frame(ftype, channel, payload, end=FRAME_END):
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + octet(end)


def method_payload(cm, args=b""):
    return struct.pack(">HH", cm[0], cm[1]) + args


def method_frame(channel, cm, args=b""):
    return frame(FRAME_METHOD, channel, method_payload(cm, args))


def header_frame(channel, body_size, class_id=BASIC_CLASS, flags=0, props=b""):
    """Content header: class, weight 0, body size, property flags, properties."""
    payload = struct.pack(">HHQH", class_id, 0, body_size, flags) + props
    return frame(FRAME_HEADER, channel, payload)


def body_frame(channel, data):
    return frame(FRAME_BODY, channel, data)


# Argument encoders for the methods the tests send.

def args_channel_open():
    return shortstr("")


def args_channel_close(code=200, text="bye", cls=0, mth=0):
    return short(code) + shortstr(text) + short(cls) + short(mth)


def args_connection_close(code=200, text="bye", cls=0, mth=0):
    return args_channel_close(code, text, cls, mth)


def args_queue_declare(name="", passive=False, durable=False, exclusive=False,
                       auto_delete=False, nowait=False, arguments=None):
    return (short(0) + shortstr(name)
            + bits(passive, durable, exclusive, auto_delete, nowait)
            + table(arguments or {}))


def args_basic_publish(exchange="", routing_key="", mandatory=False, immediate=False):
    return short(0) + shortstr(exchange) + shortstr(routing_key) + bits(mandatory, immediate)


def args_basic_get(queue, no_ack=True):
    return short(0) + shortstr(queue) + bits(no_ack)


def plain_response(user, password):
    return b"\x00" + user.encode() + b"\x00" + password.encode()


def amqplain_response(user, password):
    return table_body({"LOGIN": user, "PASSWORD": password})


# ---------------------------------------------------------------- decoders

class Reader:
    """Sequential decoder over a method's argument bytes."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("truncated arguments")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def octet(self):
        return self.take(1)[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def long(self):
        return struct.unpack(">I", self.take(4))[0]

    def longlong(self):
        return struct.unpack(">Q", self.take(8))[0]

    def shortstr(self):
        return self.take(self.octet()).decode("utf-8", "replace")

    def longstr(self):
        return self.take(self.long())

    def table(self):
        """Decodes a field table; values of unknown types end the decode."""
        sub = Reader(self.longstr())
        out = {}
        while sub.pos < len(sub.data):
            key = sub.shortstr()
            out[key] = sub.value()
        return out

    def value(self):
        t = chr(self.octet())
        fixed = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I",
                 "l": ">q", "T": ">Q", "f": ">f", "d": ">d"}
        if t == "t":
            return self.octet() != 0
        if t in fixed:
            fmt = fixed[t]
            return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        if t == "S":
            return self.longstr().decode("utf-8", "replace")
        if t == "x":
            return self.longstr()
        if t == "F":
            return self.table()
        if t == "V":
            return None
        if t == "D":
            scale = self.octet()
            return (scale, struct.unpack(">i", self.take(4))[0])
        if t == "A":
            sub = Reader(self.longstr())
            items = []
            while sub.pos < len(sub.data):
                items.append(sub.value())
            return items
        raise ValueError("unknown field type %r" % t)


def decode_close(args):
    """connection.close / channel.close arguments -> (code, text, class, method)."""
    r = Reader(args)
    return r.short(), r.shortstr(), r.short(), r.short()


# ---------------------------------------------------------------- connection

class RawConn:
    def __init__(self, host, port, timeout=5.0):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.server_properties = {}
        self.tune = None          # (channel_max, frame_max, heartbeat) from the server
        self.heartbeats_seen = 0  # heartbeat frames skipped by read_method

    # -- bytes

    def send(self, data):
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout("wanted %d bytes, have %d" % (n, len(self.buf)))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise Timeout("wanted %d bytes, have %d" % (n, len(self.buf)))
            except (ConnectionResetError, BrokenPipeError) as e:
                raise Closed(str(e))
            if not chunk:
                raise Closed("EOF with %d bytes buffered" % len(self.buf))
            self.buf += chunk

    def recv_exact(self, n, timeout=None):
        self._fill(n, time.monotonic() + (timeout or self.timeout))
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_until_eof(self, timeout=None):
        """Everything the broker sends until it closes; Timeout if it does not."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            self._fill(1 << 30, deadline)
        except Closed:
            pass
        data, self.buf = self.buf, b""
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- frames

    def send_frame(self, ftype, channel, payload, end=FRAME_END):
        self.send(frame(ftype, channel, payload, end))

    def send_method(self, channel, cm, args=b""):
        self.send(method_frame(channel, cm, args))

    def read_frame(self, timeout=None):
        """-> (type, channel, payload, raw frame bytes). Checks the frame end."""
        deadline = time.monotonic() + (timeout or self.timeout)
        self._fill(7, deadline)
        ftype, channel, size = struct.unpack(">BHI", self.buf[:7])
        self._fill(7 + size + 1, deadline)
        raw, self.buf = self.buf[:8 + size], self.buf[8 + size:]
        if raw[-1] != FRAME_END:
            raise ValueError("bad frame end %#x from broker" % raw[-1])
        return ftype, channel, raw[7:-1], raw

    def read_method(self, timeout=None):
        """Next method frame, skipping heartbeats -> (channel, (class, method), args)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            ftype, channel, payload, _ = self.read_frame(left)
            if ftype == FRAME_HEARTBEAT:
                self.heartbeats_seen += 1
                continue
            if ftype != FRAME_METHOD:
                raise AssertionError("expected a method frame, got type %d" % ftype)
            cls, mth = struct.unpack(">HH", payload[:4])
            return channel, (cls, mth), payload[4:]

    def expect_method(self, channel, cm, timeout=None):
        ch, got, args = self.read_method(timeout)
        if got in (CONNECTION_CLOSE, CHANNEL_CLOSE) and got != cm:
            raise AssertionError("expected %r on channel %d, got %r %r" %
                                 (cm, channel, got, decode_close(args)))
        assert (ch, got) == (channel, cm), \
            "expected %r on channel %d, got %r on channel %d" % (cm, channel, got, ch)
        return args

    def expect_connection_close(self, timeout=None, send_close_ok=True, wait_eof=True):
        """Waits for connection.close -> (code, text, class id, method id).

        Sends close-ok and (if wait_eof) checks that the broker then closes
        the socket. After a frame error the broker cannot parse close-ok and
        closes on a timer (3 s in RabbitMQ and Warren): wait_eof=False saves
        that time."""
        ch, cm, args = self.read_method(timeout)
        if cm == CHANNEL_CLOSE:
            raise AssertionError("expected connection.close, got channel.close %r on %d"
                                 % (decode_close(args), ch))
        assert (ch, cm) == (0, CONNECTION_CLOSE), "expected connection.close, got %r" % (cm,)
        result = decode_close(args)
        if send_close_ok:
            try:
                self.send_method(0, CONNECTION_CLOSE_OK)
            except OSError:
                pass  # the broker may already have closed its side
            if wait_eof:
                self.expect_eof()
        return result

    def expect_channel_close(self, channel, timeout=None):
        args = self.expect_method(channel, CHANNEL_CLOSE, timeout)
        return decode_close(args)

    def expect_eof(self, timeout=None):
        """Reads and discards until the broker closes; fails on a timeout."""
        self.recv_until_eof(timeout)

    # -- handshake

    def send_header(self, header=PROTOCOL_HEADER):
        self.send(header)

    def start(self, header=PROTOCOL_HEADER):
        """Sends the protocol header, reads connection.start -> mechanisms list."""
        self.send_header(header)
        r = Reader(self.expect_method(0, CONNECTION_START))
        self.version = (r.octet(), r.octet())
        self.server_properties = r.table()
        mechanisms = r.longstr().decode().split()
        self.locales = r.longstr().decode().split()
        return mechanisms

    def start_ok(self, user="guest", password="guest", mechanism="PLAIN",
                 client_properties=None, response=None):
        if response is None:
            response = (plain_response if mechanism == "PLAIN" else amqplain_response)(
                user, password)
        props = DEFAULT_CLIENT_PROPERTIES if client_properties is None else client_properties
        self.send_method(0, CONNECTION_START_OK,
                         table(props) + shortstr(mechanism) + longstr(response)
                         + shortstr("en_US"))

    def read_tune(self):
        r = Reader(self.expect_method(0, CONNECTION_TUNE))
        self.tune = (r.short(), r.long(), r.short())
        return self.tune

    def tune_ok(self, channel_max=None, frame_max=None, heartbeat=0):
        smax, sframe, _ = self.tune
        self.channel_max = smax if channel_max is None else channel_max
        self.frame_max = sframe if frame_max is None else frame_max
        self.send_method(0, CONNECTION_TUNE_OK,
                         short(self.channel_max) + long_(self.frame_max) + short(heartbeat))

    def open(self, vhost="/"):
        self.send_method(0, CONNECTION_OPEN, shortstr(vhost) + shortstr("") + bits(False))
        self.expect_method(0, CONNECTION_OPEN_OK)

    def handshake(self, user="guest", password="guest", mechanism="PLAIN",
                  channel_max=None, frame_max=None, heartbeat=0, vhost="/"):
        """Full handshake up to open-ok with the given tune-ok values
        (None = take the server's)."""
        self.start()
        self.start_ok(user, password, mechanism)
        self.read_tune()
        self.tune_ok(channel_max, frame_max, heartbeat)
        self.open(vhost)
        return self

    def is_rabbitmq(self):
        return self.server_properties.get("product") == "RabbitMQ"

    # -- small conveniences on an open connection

    def open_channel(self, channel):
        self.send_method(channel, CHANNEL_OPEN, args_channel_open())
        self.expect_method(channel, CHANNEL_OPEN_OK)

    def queue_declare(self, channel, name="", **kw):
        """-> (queue name, message count, consumer count)."""
        self.send_method(channel, QUEUE_DECLARE, args_queue_declare(name, **kw))
        r = Reader(self.expect_method(channel, QUEUE_DECLARE_OK))
        return r.shortstr(), r.long(), r.long()

    def publish(self, channel, body, exchange="", routing_key="", **kw):
        """basic.publish with its header and one body frame (or none if empty)."""
        data = method_frame(channel, BASIC_PUBLISH, args_basic_publish(exchange, routing_key, **kw))
        data += header_frame(channel, len(body))
        if body:
            data += body_frame(channel, body)
        self.send(data)

    def basic_get(self, channel, queue):
        """basic.get no-ack -> body bytes, or None on get-empty."""
        self.send_method(channel, BASIC_GET, args_basic_get(queue))
        ch, cm, _ = self.read_method()
        assert ch == channel and cm in (BASIC_GET_OK, BASIC_GET_EMPTY), (ch, cm)
        if cm == BASIC_GET_EMPTY:
            return None
        ftype, ch, payload, _ = self.read_frame()
        assert (ftype, ch) == (FRAME_HEADER, channel), (ftype, ch)
        size = struct.unpack(">Q", payload[4:12])[0]
        body = b""
        while len(body) < size:
            ftype, ch, payload, _ = self.read_frame()
            assert (ftype, ch) == (FRAME_BODY, channel), (ftype, ch)
            body += payload
        return body
