"""Sample MicroPython firmware for the gateway: the line protocol of ../protocol.md.

Put this file on the board as main.py (`mpremote cp gateway_device.py :main.py`), after
editing the settings below. One link, chosen by MODE:

  "serial"      lines on the REPL UART (stdin/stdout) or on a machine.UART
                gateway: serial:///dev/ttyUSB0?baudrate=115200
  "tcp-server"  listens on TCP_PORT, one client at a time (the newest wins)
                gateway: tcp://ESP_IP:2323
  "tcp-client"  dials GATEWAY_HOST:TCP_PORT, again and again until it answers
                gateway: tcp-listen://0.0.0.0:2323
  "udp"         one datagram per line on UDP_PORT, answers to whoever spoke last
                gateway: udp://ESP_IP:2324?bind=0.0.0.0:2324
  "mqtt"        umqtt.simple: reads PREFIX/NAME/tx, writes PREFIX/NAME/rx
                gateway: mqtt://BROKER:1883/PREFIX/NAME

The protocol part (`Device`, `LineBuffer`, `Link`) imports nothing board-specific, so
CPython imports it too: tests/test_firmware_parity.py checks that `Device` answers exactly
like gateway/simulator/device.py. `machine`, `network`, `socket` and `umqtt` are imported
inside the mode functions only. No f-strings or annotations, for older MicroPython builds.
"""

import math
import time

# -- settings ---------------------------------------------------------------------------

MODE = "serial"  # "serial", "tcp-server", "tcp-client", "udp" or "mqtt"
WIFI_SSID = "your-ssid"
WIFI_PASSWORD = "your-password"
GATEWAY_HOST = "192.168.1.10"  # tcp-client dials it; udp sends telemetry there at first
TCP_PORT = 2323
UDP_PORT = 2324  # this device's UDP port
GATEWAY_UDP_PORT = 2325  # the gateway's (its bind=); not UDP_PORT, or on one machine
#                          the device would send its telemetry to itself
MQTT_BROKER = "192.168.1.10"
MQTT_PORT = 1883
MQTT_PREFIX = "gateway"
DEVICE_NAME = "esp"
SERIAL_UART = None  # None: the REPL's stdin/stdout; or a UART id (e.g. 2 on an ESP32)
BAUDRATE = 115200  # only used with SERIAL_UART; the REPL UART keeps its own rate
LED_PIN = 2  # GPIO2: the LED of ESP-12 modules and the Wemos D1 mini (D4), active low
LED_ACTIVE_LOW = True
EOL = "\n"  # what this device ends its lines with; the gateway accepts LF, CRLF and CR
MAX_LINE = 1024  # longest line accepted, in bytes; a longer one answers ERR line too long

# -- the protocol (no I/O) --------------------------------------------------------------

KEYS = ("temp", "hum", "led", "uptime")
MAX_GO = 10000000
TOO_LONG = "ERR line too long"


def go_lines(count):
    """The `GO N` burst: `t=<i> v=<sin(i/100), 4 decimals>` for i = 1..N."""
    for i in range(1, count + 1):
        yield "t=%d v=%.4f" % (i, math.sin(i / 100))


class TicksClock:
    """Milliseconds since creation from time.ticks_ms(), which wraps (on the ESP8266 every
    2**30 ms, about 12 days). Call it at least once a day and it never jumps.

    A whole number, not float seconds: the ESP8266's floats have 24 bits, so a float of
    seconds since boot steps by 2 s after 194 days and the telemetry schedule breaks."""

    def __init__(self):
        self._last = time.ticks_ms()
        self._ms = 0

    def __call__(self):
        now = time.ticks_ms()
        self._ms += time.ticks_diff(now, self._last)
        self._last = now
        return self._ms


def default_clock():
    if hasattr(time, "monotonic_ns"):  # CPython
        return lambda: time.monotonic_ns() // 1000000
    return TicksClock()


SPACES = " \t\n\r\x0b\x0c"  # the protocol's whitespace: ASCII only, as in protocol.md


def upper(text):
    """ASCII upper case (MicroPython's upper() is; CPython's also maps "\u0131" to "I")."""
    return "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in text)


def words(text):
    """The words of `text` between ASCII spaces (CPython's split() knows more spaces)."""
    for space in SPACES[1:]:
        text = text.replace(space, " ")
    return [word for word in text.split(" ") if word]


def is_number(text):
    """A decimal number as the simulator reads it: "2", "0.5", ".5", "1e3", "-0" (ASCII
    digits; no "inf", "nan", "1_0"). MicroPython's float() would take "." and "e3" as 0."""
    i = 0
    if text[:1] in ("+", "-"):
        i = 1
    digits = 0
    while i < len(text) and "0" <= text[i] <= "9":
        i += 1
        digits += 1
    if text[i:i + 1] == ".":
        i += 1
        while i < len(text) and "0" <= text[i] <= "9":
            i += 1
            digits += 1
    if digits == 0:
        return False
    if text[i:i + 1] in ("e", "E"):
        i += 1
        if text[i:i + 1] in ("+", "-"):
            i += 1
        if not (i < len(text) and "0" <= text[i] <= "9"):
            return False
        while i < len(text) and "0" <= text[i] <= "9":
            i += 1
    return i == len(text)


def is_count(text):
    """A whole number: an optional sign and ASCII digits (int() takes "1_0" and "\u0663")."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    return digits != "" and all("0" <= c <= "9" for c in digits)


class Device:
    """The device's answers and telemetry, like gateway.simulator.device.SimulatedDevice.

    `clock` returns milliseconds (a whole number) and is only ever subtracted from
    itself. `on_led` is called with 0 or 1 when `LED ON` / `LED OFF` changes the LED.
    `sensor`, when given, returns `(temp, hum)` and replaces the simulated values.
    """

    def __init__(self, interval=1.0, clock=None, on_led=None, sensor=None):
        if not (interval >= 0 and math.isfinite(interval)):
            raise ValueError("interval must be a finite number >= 0")
        self.clock = clock if clock is not None else default_clock()
        self.on_led = on_led
        self.sensor = sensor
        self.started = self.clock()
        self.led = 0
        self._set_interval(float(interval), self.started)

    def _set_interval(self, seconds, now):
        self.interval = seconds
        # In whole ms, at most 10**9 s (float("1e38") * 1000 is inf on a board)
        self._interval_ms = max(1, int(min(seconds, 1e9) * 1000 + 0.5)) if seconds > 0 else 0
        self._next_telemetry = now + self._interval_ms

    # -- values

    def uptime(self):
        return (self.clock() - self.started) // 1000

    def value(self, key):
        ms = self.clock() - self.started
        t = ms / 1000
        if key == "temp":
            temp = self.sensor()[0] if self.sensor else 21.5 + 1.5 * math.sin(t / 30)
            return "%.2f" % temp
        if key == "hum":
            hum = self.sensor()[1] if self.sensor else 40 + 5 * math.sin(t / 50)
            return "%.1f" % hum
        if key == "led":
            return str(self.led)
        if key == "uptime":
            return str(ms // 1000)
        raise KeyError(key)

    def telemetry_line(self):
        return " ".join("%s=%s" % (key, self.value(key)) for key in KEYS)

    # -- periodic telemetry

    def ms_to_telemetry(self):
        """Milliseconds until the next telemetry line, or None when it is off."""
        if self._interval_ms == 0:
            return None
        return max(0, self._next_telemetry - self.clock())

    def telemetry_due(self):
        """The telemetry line if it is due now (and schedule the next one), else None."""
        if self._interval_ms == 0:
            return None
        now = self.clock()
        if now < self._next_telemetry:
            return None
        self._next_telemetry += self._interval_ms
        if self._next_telemetry <= now:  # not asked for a while: do not catch up
            self._next_telemetry = now + self._interval_ms
        return self.telemetry_line()

    # -- commands

    def handle(self, line):
        """The lines answered to `line` (a generator for `GO N`, else a list).

        ASCII only, as in protocol.md: spaces, letters and digits."""
        parts = line.strip(SPACES).split(" ", 1)
        cmd = upper(parts[0])
        arg = parts[1].strip(SPACES) if len(parts) > 1 else ""
        if cmd == "PING" and not arg:
            return ["PONG"]
        if cmd == "ECHO":
            return [line.split(" ", 1)[1] if " " in line else ""]
        if cmd == "LED" and upper(arg) in ("ON", "OFF"):
            self.led = 1 if upper(arg) == "ON" else 0
            if self.on_led:
                self.on_led(self.led)
            return ["OK LED " + upper(arg), "led=%d" % self.led]
        if cmd == "GET" and arg:
            try:
                return ["%s=%s" % (arg, self.value(arg))]
            except KeyError:
                return ["ERR unknown key: " + arg]
        if cmd == "SET":
            return self._set(arg)
        if cmd == "GO":
            if not is_count(arg) or len(arg.lstrip("+-").lstrip("0")) > 8:
                return ["ERR bad count: " + arg]
            count = int(arg)
            if not 0 <= count <= MAX_GO:
                return ["ERR bad count: " + arg]
            return go_lines(count)
        return ["ERR unknown command: " + line]

    def _set(self, arg):
        parts = words(arg)
        if len(parts) != 2 or parts[0] != "interval":
            return ["ERR unknown setting: " + arg]
        if not is_number(parts[1]):
            return ["ERR bad interval: " + parts[1]]
        interval = float(parts[1])
        if not math.isfinite(interval) or interval < 0:
            return ["ERR bad interval: " + parts[1]]
        self._set_interval(interval, self.clock())
        return ["OK interval " + parts[1]]


# UTF-8 lead bytes: how many bytes follow, and the range of the first one (which rules
# out overlong forms, surrogates U+D800..DFFF and code points past U+10FFFF).
_LEADS = {0xE0: (2, 0xA0, 0xBF), 0xED: (2, 0x80, 0x9F), 0xF0: (3, 0x90, 0xBF),
          0xF4: (3, 0x80, 0x8F)}


def _lead(b):
    if 0xC2 <= b <= 0xDF:
        return (1, 0x80, 0xBF)
    if b in _LEADS:
        return _LEADS[b]
    if 0xE1 <= b <= 0xEF:
        return (2, 0x80, 0xBF)
    if 0xF1 <= b <= 0xF3:
        return (3, 0x80, 0xBF)
    return None


def decode(raw):
    """Bytes to str, each invalid UTF-8 sequence as one U+FFFD, like CPython's
    errors="replace". MicroPython's own decoder has no errors= and lets surrogates,
    overlong forms and code points past U+10FFFF through."""
    try:
        text = raw.decode("utf-8")
        if len(text) == len(raw):  # ASCII: nothing to check
            return text
    except UnicodeError:
        pass
    out = []
    i = 0
    while i < len(raw):
        b = raw[i]
        lead = _lead(b) if b >= 0x80 else (0, 0, 0)
        if lead is None:
            out.append("\ufffd")
            i += 1
            continue
        follow, low, high = lead
        j = i + 1
        while j <= i + follow and j < len(raw) and low <= raw[j] <= high:
            j += 1
            low, high = 0x80, 0xBF
        out.append(raw[i:j].decode("utf-8") if j == i + follow + 1 else "\ufffd")
        i = j
    return "".join(out)


class LineBuffer:
    """Received bytes in, complete lines out. LF, CRLF and CR each end a line (a CRLF
    split across two reads is still one line end). A line longer than `max_line` bytes
    is dropped and comes out as None, so the buffer never grows past `max_line`."""

    def __init__(self, max_line=MAX_LINE):
        self.max_line = max_line
        self.reset()

    def reset(self):
        """Forget a partial line (a new connection starts clean)."""
        self._buf = bytearray()
        self._after_cr = False
        self._overflow = False

    def feed(self, data):
        lines = []
        for b in data:
            if self._after_cr:
                self._after_cr = False
                if b == 10:
                    continue
            if b == 10 or b == 13:
                self._after_cr = b == 13
                lines.append(self._take())
            elif self._overflow:
                pass
            elif len(self._buf) >= self.max_line:
                self._overflow = True
                self._buf = bytearray()
            else:
                self._buf.append(b)
        return lines

    def finish(self):
        """The end of a message (a UDP datagram, an MQTT message) ends its last line."""
        self._after_cr = False
        if self._buf or self._overflow:
            return [self._take()]
        return []

    def _take(self):
        if self._overflow:
            self._overflow = False
            return None
        raw = bytes(self._buf)
        self._buf = bytearray()
        return decode(raw)


class Link:
    """One device behind one link: bytes in, answers and telemetry out through `send`.

    `send(line)` writes one line (without its end); it may be None while nobody listens,
    and then lines are dropped (telemetry keeps its schedule).
    """

    def __init__(self, device, send=None, max_line=MAX_LINE):
        self.device = device
        self.send = send
        self.lines = LineBuffer(max_line)

    def feed(self, data):
        for line in self.lines.feed(data):
            self.answer(line)

    def message(self, data):
        """A whole message: its last line needs no line end."""
        self.feed(data)
        for line in self.lines.finish():
            self.answer(line)

    def answer(self, line):
        answers = [TOO_LONG] if line is None else self.device.handle(line)
        for out in answers:
            if self.send is not None:
                self.send(out)

    def tick(self):
        """Send the telemetry line if it is due."""
        line = self.device.telemetry_due()
        if line is not None and self.send is not None:
            self.send(line)

    def wait_ms(self, cap_ms=1000):
        """How long the caller may block waiting for input before tick() is owed."""
        ms = self.device.ms_to_telemetry()
        if ms is None:
            return cap_ms
        return min(cap_ms, ms)


# -- the board: everything below imports machine, network, socket or umqtt lazily --------


def led_output():
    """on_led for Device: drive LED_PIN (LED off at start)."""
    from machine import Pin

    pin = Pin(LED_PIN, Pin.OUT)

    def set_led(on):
        pin.value((not on) if LED_ACTIVE_LOW else bool(on))

    set_led(0)
    return set_led


def dht22_sensor(gpio):
    """sensor for Device: a DHT22 on `gpio`, read at most every 2 s (its limit).

    Use it with Device(sensor=dht22_sensor(14)) for a DHT22 data pin on GPIO14 (D5),
    with a 10 kOhm pull-up to 3.3 V.
    """
    import dht
    from machine import Pin

    sensor = dht.DHT22(Pin(gpio))
    last = {"at": None, "values": (float("nan"), float("nan"))}

    def read():
        now = time.ticks_ms()
        if last["at"] is None or time.ticks_diff(now, last["at"]) >= 2000:
            last["at"] = now
            try:
                sensor.measure()
                last["values"] = (sensor.temperature(), sensor.humidity())
            except OSError:
                pass  # keep the last good reading
        return last["values"]

    return read


def connect_wifi():
    import network

    try:  # no modem sleep: it adds up to 100 ms or more to every answer
        import esp

        esp.sleep_type(esp.SLEEP_NONE)
    except (ImportError, AttributeError):
        pass
    sta = network.WLAN(network.STA_IF)
    sta.active(True)
    if not sta.isconnected():
        sta.connect(WIFI_SSID, WIFI_PASSWORD)
        while not sta.isconnected():
            time.sleep_ms(100)
    print("# wifi up, ip", sta.ifconfig()[0])
    return sta


def _address(host, port):
    import socket

    return socket.getaddrinfo(host, port)[0][-1]


def _sender(sock):
    def send(line):
        sock.write((line + EOL).encode())  # write(): every port has it, not sendall()

    return send


def run_serial(device):
    import select
    import sys

    if SERIAL_UART is None:
        stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin

        def read():
            data = stream.read(1)
            return data.encode() if isinstance(data, str) else data

        def send(line):
            sys.stdout.write(line + EOL)

    else:
        from machine import UART

        stream = UART(SERIAL_UART, BAUDRATE)

        def read():
            return stream.read()

        def send(line):
            stream.write((line + EOL).encode())

    link = Link(device, send)
    poller = select.poll()
    poller.register(stream, select.POLLIN)
    while True:
        if poller.poll(link.wait_ms()):
            data = read()
            if data:
                link.feed(data)
        link.tick()


def run_tcp_server(device):
    import select
    import socket

    connect_wifi()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(_address("0.0.0.0", TCP_PORT))
    server.listen(1)
    poller = select.poll()
    poller.register(server, select.POLLIN)
    link = Link(device)
    client = None

    def drop():
        poller.unregister(client)
        client.close()
        link.send = None
        link.lines.reset()

    while True:
        for entry in poller.poll(link.wait_ms()):
            obj, event = entry[0], entry[1]
            if obj is server:
                incoming, addr = server.accept()
                if client is not None:  # the newest client wins: the old one is stale
                    drop()
                client = incoming
                poller.register(client, select.POLLIN)
                link.send = _sender(client)
                print("# client", addr)
            elif obj is client:
                data = b""
                if not event & (select.POLLHUP | select.POLLERR):
                    try:
                        data = client.recv(512)
                    except OSError:
                        pass
                if data:
                    try:
                        link.feed(data)
                    except OSError:
                        data = b""
                if not data:
                    drop()
                    client = None
        try:
            link.tick()
        except OSError:
            if client is not None:
                drop()
                client = None


def _serve_socket(link, sock):
    """Run the link over a connected stream socket until the peer goes away."""
    import select

    poller = select.poll()
    poller.register(sock, select.POLLIN)
    link.send = _sender(sock)
    link.lines.reset()
    try:
        while True:
            events = poller.poll(link.wait_ms())
            if events:
                if events[0][1] & (select.POLLHUP | select.POLLERR):
                    return
                data = sock.recv(512)
                if not data:
                    return
                link.feed(data)
            link.tick()
    except OSError:
        return
    finally:
        link.send = None
        sock.close()


def run_tcp_client(device):
    import socket

    connect_wifi()
    link = Link(device)
    backoff = 0.2
    while True:
        sock = socket.socket()
        try:
            sock.connect(_address(GATEWAY_HOST, TCP_PORT))
        except OSError:
            sock.close()
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        print("# connected to", GATEWAY_HOST, TCP_PORT)
        backoff = 0.2
        _serve_socket(link, sock)
        print("# gateway link lost")


def run_udp(device):
    import select
    import socket

    connect_wifi()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(_address("0.0.0.0", UDP_PORT))
    peer = [_address(GATEWAY_HOST, GATEWAY_UDP_PORT) if GATEWAY_HOST else None]

    def send(line):
        if peer[0] is not None:
            sock.sendto((line + EOL).encode(), peer[0])

    link = Link(device, send)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        if poller.poll(link.wait_ms()):
            data, addr = sock.recvfrom(MAX_LINE + 2)  # room for a CRLF
            peer[0] = addr  # answer whoever spoke last
            try:
                link.message(data)
            except OSError:
                pass
        try:
            link.tick()
        except OSError:
            pass


def run_mqtt(device):
    from umqtt.simple import MQTTClient, MQTTException

    connect_wifi()
    base = "%s/%s/" % (MQTT_PREFIX, DEVICE_NAME)
    keepalive = 30
    backoff = 0.2
    while True:
        client = MQTTClient("%s-%s" % (MQTT_PREFIX, DEVICE_NAME), MQTT_BROKER,
                            port=MQTT_PORT, keepalive=keepalive)
        client.set_last_will(base + "status", b'{"state": "offline"}', retain=True, qos=1)

        def send(line, client=client):
            client.publish(base + "rx", line.encode())

        link = Link(device, send)
        client.set_callback(lambda topic, msg: link.message(msg))
        try:
            client.connect()
            client.publish(base + "status", b'{"state": "connected"}', retain=True, qos=1)
            client.subscribe(base + "tx", qos=1)
            print("# mqtt up,", base + "tx", "->", base + "rx")
            backoff = 0.2
            pinged = time.ticks_ms()
            while True:
                client.check_msg()
                link.tick()
                if time.ticks_diff(time.ticks_ms(), pinged) > keepalive * 1000 // 2:
                    client.ping()
                    pinged = time.ticks_ms()
                time.sleep_ms(min(link.wait_ms(), 20))
        except (OSError, MQTTException) as exc:  # MQTTException: the broker said no
            print("# mqtt link lost:", repr(exc))
            try:
                client.sock.close()
            except Exception:
                pass
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


MODES = {
    "serial": run_serial,
    "tcp-server": run_tcp_server,
    "tcp-client": run_tcp_client,
    "udp": run_udp,
    "mqtt": run_mqtt,
}


def main():
    device = Device(on_led=led_output())
    # With a DHT22 on GPIO14 (D5): Device(on_led=led_output(), sensor=dht22_sensor(14))
    MODES[MODE](device)


if __name__ == "__main__":
    main()
