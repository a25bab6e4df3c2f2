// esp8266_gateway.ino: sample ESP8266 firmware for the WebSocket-to-device gateway.
//
// Speaks the line protocol of firmware_notes/protocol.md (the same as the gateway's
// simulator) over one link, chosen at compile time with LINK_MODE below:
//
//   LINK_SERIAL      USB serial at BAUDRATE     gateway: serial:///dev/ttyUSB0?baudrate=115200
//   LINK_TCP_SERVER  listens on TCP_PORT        gateway: tcp://ESP_IP:2323
//   LINK_TCP_CLIENT  dials GATEWAY_HOST         gateway: tcp-listen://0.0.0.0:2323
//   LINK_UDP         datagrams on UDP_PORT      gateway: udp://ESP_IP:2324?bind=0.0.0.0:2325
//   LINK_MQTT        PubSubClient, MQTT_BROKER  gateway: mqtt://BROKER:1883/PREFIX/NAME
//
// Board: "LOLIN(WEMOS) D1 R2 & mini" or "NodeMCU 1.0 (ESP-12E Module)", ESP8266 Arduino
// core 3.x. LINK_MQTT needs the PubSubClient library (Nick O'Leary, 2.8 or later).
// In the WiFi modes the USB serial port prints status lines starting with "# " (the IP
// address among them) at BAUDRATE; in LINK_SERIAL it carries the protocol and nothing else.

#define LINK_SERIAL 1
#define LINK_TCP_SERVER 2
#define LINK_TCP_CLIENT 3
#define LINK_UDP 4
#define LINK_MQTT 5

#define LINK_MODE LINK_SERIAL

// -- settings ----------------------------------------------------------------------------

static const char WIFI_SSID[] = "your-ssid";
static const char WIFI_PASSWORD[] = "your-password";
// LINK_TCP_CLIENT dials it; LINK_UDP sends telemetry there until a datagram arrives.
static const char GATEWAY_HOST[] = "192.168.1.10";
static const uint16_t TCP_PORT = 2323;
static const uint16_t UDP_PORT = 2324;          // this board's UDP port
static const uint16_t GATEWAY_UDP_PORT = 2325;  // the gateway's (its bind=); not UDP_PORT,
                                                // or on one machine the board talks to itself
static const char MQTT_BROKER[] = "192.168.1.10";
static const uint16_t MQTT_PORT = 1883;
static const char MQTT_PREFIX[] = "gateway";
static const char DEVICE_NAME[] = "esp";
static const uint32_t BAUDRATE = 115200;
static const char EOL[] = "\n";  // the gateway accepts LF, CRLF and CR

#define MAX_LINE 1024       // longest line accepted; longer ones answer ERR line too long
#define LED_ACTIVE_LOW 1    // LED_BUILTIN lights when its pin is LOW on both boards
#define BURST_CHUNK 32      // GO lines sent per loop() pass, so WiFi keeps running
#define MAX_GO 10000000UL

// Simulated temperature and humidity unless a DHT22 is fitted: set USE_DHT22 to 1, wire
// its data pin to GPIO14 (D5) with a 10 kOhm pull-up to 3.3 V, and install the "DHT
// sensor library" (Adafruit). Not GPIO2 (D4): that is the LED and must be high at boot.
#define USE_DHT22 0
#define DHT_PIN 14

// -- includes ----------------------------------------------------------------------------

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if LINK_MODE != LINK_SERIAL
#include <ESP8266WiFi.h>
#endif
#if LINK_MODE == LINK_UDP
#include <WiFiUdp.h>
#endif
#if LINK_MODE == LINK_MQTT
#include <PubSubClient.h>
#endif
#if USE_DHT22
#include <DHT.h>
#endif

// -- state -------------------------------------------------------------------------------

static uint8_t ledState = 0;
static double intervalS = 1.0;          // 0: no periodic telemetry
static uint64_t nextTelemetryUs = 0;    // micros64() when the next telemetry line is due
static uint64_t startedUs = 0;
static uint32_t goNext = 1;             // a GO burst runs while goNext <= goCount
static uint32_t goCount = 0;

static char lineBuf[MAX_LINE + 1];      // the line being received
static size_t lineLen = 0;
static bool lineOverflow = false;       // the line being received is too long: drop it
static bool afterCr = false;            // last byte was CR: an LF now ends nothing

static char work[MAX_LINE + 1];         // handleLine()'s copy of the line, split in place
static char answer[MAX_LINE + 40];      // an answer being built
static char wire[MAX_LINE + 48];        // an answer plus EOL, for one write

#if LINK_MODE == LINK_UDP || LINK_MODE == LINK_MQTT
// One received datagram or MQTT message, handed to the line buffer a byte at a time
// (a GO in its middle leaves the rest waiting until the burst is over).
static uint8_t inbox[MAX_LINE + 2];
static size_t inboxLen = 0;
static size_t inboxPos = 0;
static bool inboxFull = false;
static bool inboxTooLong = false;
#endif

#if LINK_MODE == LINK_TCP_SERVER
static WiFiServer server(TCP_PORT);
static WiFiClient tcp;            // not `link`: that is a POSIX function
static bool linkUp = false;             // not `if (tcp)`: that is true while data is unread
#elif LINK_MODE == LINK_TCP_CLIENT
static WiFiClient tcp;            // not `link`: that is a POSIX function
static bool linkUp = false;
#elif LINK_MODE == LINK_UDP
static WiFiUDP udp;
static IPAddress peerIp;
static uint16_t peerPort = 0;           // 0: nobody to send to yet
#elif LINK_MODE == LINK_MQTT
// PubSubClient drops a message longer than its buffer without a word and without
// acknowledging it: the broker keeps it in flight, and after 20 such (mosquitto's
// default) sends nothing more. Given a Stream, it hands such a message over cut short
// instead; onMqttMessage() then sees more than MAX_LINE bytes: ERR line too long.
class Discard : public Stream {
 public:
  size_t write(uint8_t) override { return 1; }
  int available() override { return 0; }
  int read() override { return -1; }
  int peek() override { return -1; }
};
static WiFiClient net;
static Discard discard;
static PubSubClient mqtt(net);
static char topicTx[96];
static char topicRx[96];
static char topicStatus[96];
static bool mqttUp = false;
#endif

#if LINK_MODE != LINK_SERIAL
static bool wifiUp = false;
#endif
#if LINK_MODE == LINK_TCP_CLIENT || LINK_MODE == LINK_MQTT
static uint32_t retryAtMs = 0;          // reconnect backoff: 0.2 s doubling to 5 s
static uint32_t backoffMs = 200;
#endif

#if USE_DHT22
static DHT dht(DHT_PIN, DHT22);
static float dhtTemp = NAN;
static float dhtHum = NAN;
static uint32_t dhtReadMs = 0;
static bool dhtRead = false;
#endif

// -- time, LED, sensor -------------------------------------------------------------------

static double uptimeSeconds() {
  return (double)(micros64() - startedUs) / 1e6;
}

static uint64_t intervalUs(double seconds) {
  if (seconds >= 1e12) return (uint64_t)1e18;  // "never", without overflowing
  return (uint64_t)(seconds * 1e6);
}

static void setLed(uint8_t on) {
  ledState = on ? 1 : 0;
#if LED_ACTIVE_LOW
  digitalWrite(LED_BUILTIN, ledState ? LOW : HIGH);
#else
  digitalWrite(LED_BUILTIN, ledState ? HIGH : LOW);
#endif
}

static void readSensor(double* temp, double* hum) {
#if USE_DHT22
  // The DHT22 answers at most every 2 s; between reads, and after a failed one, keep the
  // last good values (NaN before the first, which prints as "nan").
  if (!dhtRead || millis() - dhtReadMs >= 2000) {
    dhtRead = true;
    dhtReadMs = millis();
    float t = dht.readTemperature();
    float h = dht.readHumidity();
    if (!isnan(t) && !isnan(h)) {
      dhtTemp = t;
      dhtHum = h;
    }
  }
  *temp = dhtTemp;
  *hum = dhtHum;
#else
  double t = uptimeSeconds();
  *temp = 21.5 + 1.5 * sin(t / 30.0);
  *hum = 40.0 + 5.0 * sin(t / 50.0);
#endif
}

// Write "<key>=<value>" for a known key into out; false for an unknown key.
static bool formatValue(const char* key, char* out, size_t size) {
  double temp, hum;
  if (strcmp(key, "temp") == 0) {
    readSensor(&temp, &hum);
    snprintf(out, size, "temp=%.2f", temp);
  } else if (strcmp(key, "hum") == 0) {
    readSensor(&temp, &hum);
    snprintf(out, size, "hum=%.1f", hum);
  } else if (strcmp(key, "led") == 0) {
    snprintf(out, size, "led=%u", (unsigned)ledState);
  } else if (strcmp(key, "uptime") == 0) {
    snprintf(out, size, "uptime=%lu", (unsigned long)uptimeSeconds());
  } else {
    return false;
  }
  return true;
}

static void telemetryLine(char* out, size_t size) {
  double temp, hum;
  readSensor(&temp, &hum);
  snprintf(out, size, "temp=%.2f hum=%.1f led=%u uptime=%lu", temp, hum,
           (unsigned)ledState, (unsigned long)uptimeSeconds());
}

// -- sending -----------------------------------------------------------------------------

static bool linkReady() {
#if LINK_MODE == LINK_SERIAL
  return true;
#elif LINK_MODE == LINK_TCP_SERVER || LINK_MODE == LINK_TCP_CLIENT
  return tcp.connected();
#elif LINK_MODE == LINK_UDP
  return peerPort != 0;
#elif LINK_MODE == LINK_MQTT
  return mqtt.connected();
#endif
}

// Send one line (without its end) to whoever is on the link; dropped when nobody is.
static void sendLine(const char* line) {
  size_t n = strlen(line);
  if (n > sizeof(wire) - sizeof(EOL)) n = sizeof(wire) - sizeof(EOL);
#if LINK_MODE == LINK_MQTT
  if (mqtt.connected()) mqtt.publish(topicRx, (const uint8_t*)line, n, false);
#else
  memcpy(wire, line, n);
  memcpy(wire + n, EOL, sizeof(EOL) - 1);
  n += sizeof(EOL) - 1;
#if LINK_MODE == LINK_SERIAL
  Serial.write((const uint8_t*)wire, n);
#elif LINK_MODE == LINK_TCP_SERVER || LINK_MODE == LINK_TCP_CLIENT
  if (tcp.connected()) tcp.write((const uint8_t*)wire, n);
#elif LINK_MODE == LINK_UDP
  if (peerPort != 0) {
    udp.beginPacket(peerIp, peerPort);
    udp.write((const uint8_t*)wire, n);
    udp.endPacket();
  }
#endif
#endif
}

// -- the protocol ------------------------------------------------------------------------

static bool isSpace(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

// Trim spaces at both ends, in place; returns the new start.
static char* trim(char* s) {
  while (isSpace(*s)) s++;
  size_t n = strlen(s);
  while (n > 0 && isSpace(s[n - 1])) s[--n] = '\0';
  return s;
}

static void upperCase(char* s) {
  for (; *s; s++) {
    if (*s >= 'a' && *s <= 'z') *s = *s - 'a' + 'A';
  }
}

static bool equalsIgnoreCase(const char* a, const char* b) {
  return strcasecmp(a, b) == 0;
}

// A whole number as Python's int() reads it (sign, digits), capped at MAX_GO + 1.
static bool parseCount(const char* s, unsigned long* out) {
  bool negative = false;
  if (*s == '+' || *s == '-') negative = (*s++ == '-');
  if (*s == '\0') return false;
  unsigned long value = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return false;
    if (value <= MAX_GO) value = value * 10 + (unsigned long)(*s - '0');
  }
  if (negative && value != 0) value = MAX_GO + 1;  // any negative count is bad; -0 is 0
  *out = value;
  return true;
}

// A decimal number ("2", "0.5", ".5", "1e3", "-0"); anything else (inf, nan, hex) is
// refused, which answers the same as the simulator since it refuses non-finite values.
static bool parseSeconds(const char* s, double* out) {
  const char* p = s;
  if (*p == '+' || *p == '-') p++;
  bool digits = false;
  while (*p >= '0' && *p <= '9') { p++; digits = true; }
  if (*p == '.') {
    p++;
    while (*p >= '0' && *p <= '9') { p++; digits = true; }
  }
  if (!digits) return false;
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-') p++;
    if (!(*p >= '0' && *p <= '9')) return false;
    while (*p >= '0' && *p <= '9') p++;
  }
  if (*p != '\0') return false;
  *out = strtod(s, NULL);
  return true;
}

static bool burstActive() {
  return goNext <= goCount;
}

static void stopBurst() {
  goNext = 1;
  goCount = 0;
}

static void handleSet(char* arg) {
  // Exactly two words, "interval" and a number; arg is already trimmed.
  char* words[3];
  int count = 0;
  char* p = arg;
  while (*p && count < 3) {
    while (isSpace(*p)) p++;
    if (!*p) break;
    words[count++] = p;
    while (*p && !isSpace(*p)) p++;
  }
  if (count != 2 || strncmp(words[0], "interval", 8) != 0 || !isSpace(words[0][8])) {
    snprintf(answer, sizeof(answer), "ERR unknown setting: %s", arg);
    sendLine(answer);
    return;
  }
  char* value = words[1];  // the last word: ends at the string's end
  double seconds;
  if (!parseSeconds(value, &seconds) || !isfinite(seconds) || seconds < 0) {
    snprintf(answer, sizeof(answer), "ERR bad interval: %s", value);
    sendLine(answer);
    return;
  }
  intervalS = seconds;
  nextTelemetryUs = micros64() + intervalUs(seconds);
  snprintf(answer, sizeof(answer), "OK interval %s", value);
  sendLine(answer);
}

// Answer one received line, exactly like gateway/simulator/device.py.
static void handleLine(const char* line) {
  size_t n = strlen(line);
  memcpy(work, line, n + 1);
  char* cmd = trim(work);
  char* arg = cmd + strlen(cmd);  // "" unless there is a space
  char* space = strchr(cmd, ' ');
  if (space) {
    *space = '\0';
    arg = trim(space + 1);
  }
  upperCase(cmd);

  if (strcmp(cmd, "PING") == 0 && *arg == '\0') {
    sendLine("PONG");
    return;
  }
  if (strcmp(cmd, "ECHO") == 0) {
    const char* text = strchr(line, ' ');  // everything after the first space, as sent
    sendLine(text ? text + 1 : "");
    return;
  }
  if (strcmp(cmd, "LED") == 0 && (equalsIgnoreCase(arg, "ON") || equalsIgnoreCase(arg, "OFF"))) {
    bool on = equalsIgnoreCase(arg, "ON");
    setLed(on ? 1 : 0);
    sendLine(on ? "OK LED ON" : "OK LED OFF");
    sendLine(on ? "led=1" : "led=0");
    return;
  }
  if (strcmp(cmd, "GET") == 0 && *arg != '\0') {
    if (!formatValue(arg, answer, sizeof(answer))) {
      snprintf(answer, sizeof(answer), "ERR unknown key: %s", arg);
    }
    sendLine(answer);
    return;
  }
  if (strcmp(cmd, "SET") == 0) {
    handleSet(arg);
    return;
  }
  if (strcmp(cmd, "GO") == 0) {
    unsigned long count;
    if (!parseCount(arg, &count) || count > MAX_GO) {
      snprintf(answer, sizeof(answer), "ERR bad count: %s", arg);
      sendLine(answer);
      return;
    }
    goNext = 1;
    goCount = (uint32_t)count;  // loop() sends the lines, BURST_CHUNK at a time
    return;
  }
  snprintf(answer, sizeof(answer), "ERR unknown command: %s", line);
  sendLine(answer);
}

static void sendBurst() {
  for (int i = 0; i < BURST_CHUNK && burstActive(); i++, goNext++) {
    snprintf(answer, sizeof(answer), "t=%lu v=%.4f", (unsigned long)goNext,
             sin(goNext / 100.0));
    sendLine(answer);
  }
}

static void sendTelemetryIfDue() {
  if (intervalS <= 0) return;
  uint64_t now = micros64();
  if (now < nextTelemetryUs) return;
  nextTelemetryUs += intervalUs(intervalS);
  if (nextTelemetryUs <= now) nextTelemetryUs = now + intervalUs(intervalS);  // no catch-up
  if (!linkReady()) return;  // nobody to tell: keep the schedule, drop the line
  telemetryLine(answer, sizeof(answer));
  sendLine(answer);
}

// -- receiving ---------------------------------------------------------------------------

static void resetLine() {
  lineLen = 0;
  lineOverflow = false;
  afterCr = false;
}

static void endLine() {
  if (lineOverflow) {
    sendLine("ERR line too long");
  } else {
    lineBuf[lineLen] = '\0';
    handleLine(lineBuf);
  }
  lineLen = 0;
  lineOverflow = false;
}

// One received byte. LF, CRLF and CR each end a line; the buffer never holds more
// than MAX_LINE bytes (a longer line is dropped whole).
static void feedByte(uint8_t c) {
  if (afterCr) {
    afterCr = false;
    if (c == '\n') return;
  }
  if (c == '\n' || c == '\r') {
    afterCr = (c == '\r');
    endLine();
    return;
  }
  if (c == '\0' || lineOverflow) return;  // a NUL would cut the C string short
  if (lineLen >= MAX_LINE) {
    lineOverflow = true;
    return;
  }
  lineBuf[lineLen++] = (char)c;
}

#if LINK_MODE == LINK_UDP || LINK_MODE == LINK_MQTT
// The end of a datagram or MQTT message ends its last line.
static void endMessage() {
  afterCr = false;
  if (lineLen > 0 || lineOverflow) endLine();
}

static void processInbox() {
  while (inboxFull && !burstActive()) {
    if (inboxTooLong) {
      sendLine("ERR line too long");
      inboxFull = inboxTooLong = false;
    } else if (inboxPos < inboxLen) {
      feedByte(inbox[inboxPos++]);
    } else {
      endMessage();
      inboxFull = false;
    }
  }
}
#endif

// Read what the link holds, a line at a time, stopping when a GO burst starts (the
// rest waits in the UART or TCP buffer until the burst is over).
static void readInput() {
#if LINK_MODE == LINK_SERIAL
  for (int i = 0; i < 256 && Serial.available() > 0 && !burstActive(); i++) {
    feedByte((uint8_t)Serial.read());
  }
#elif LINK_MODE == LINK_TCP_SERVER || LINK_MODE == LINK_TCP_CLIENT
  for (int i = 0; i < 256 && tcp.available() > 0 && !burstActive(); i++) {
    feedByte((uint8_t)tcp.read());
  }
#else
  processInbox();
#endif
}

// -- the link ----------------------------------------------------------------------------

#if LINK_MODE != LINK_SERIAL
static void startWifi() {
  WiFi.persistent(false);            // do not rewrite flash on every boot
  WiFi.mode(WIFI_STA);
  WiFi.setSleepMode(WIFI_NONE_SLEEP);  // modem sleep delays answers by 100 ms or more
  WiFi.setAutoReconnect(true);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  Serial.printf("# connecting to WiFi %s\n", WIFI_SSID);
}

static bool wifiReady() {
  bool up = WiFi.status() == WL_CONNECTED;
  if (up != wifiUp) {
    wifiUp = up;
    if (up) {
      Serial.printf("# WiFi up, ip %s\n", WiFi.localIP().toString().c_str());
    } else {
      Serial.println("# WiFi down");
    }
  }
  return up;
}

#endif

#if LINK_MODE == LINK_TCP_CLIENT || LINK_MODE == LINK_MQTT
static bool retryDue() {
  return (int32_t)(millis() - retryAtMs) >= 0;
}

static void retryLater() {
  retryAtMs = millis() + backoffMs;
  backoffMs = backoffMs * 2 > 5000 ? 5000 : backoffMs * 2;
}
#endif

#if LINK_MODE == LINK_MQTT
static void onMqttMessage(char* topic, uint8_t* payload, unsigned int length) {
  (void)topic;  // only PREFIX/NAME/tx is subscribed
  // Copy now: the payload lives in PubSubClient's buffer, which publish() reuses.
  if (length > sizeof(inbox)) {
    inboxTooLong = true;
    inboxLen = 0;
  } else {
    memcpy(inbox, payload, length);
    inboxLen = length;
  }
  inboxPos = 0;
  inboxFull = true;
}
#endif

// Keep the link up and take in what arrived (datagrams and MQTT messages to the inbox).
static void maintainLink() {
#if LINK_MODE == LINK_TCP_SERVER
  wifiReady();
  if (server.hasClient()) {
    WiFiClient incoming = server.accept();  // core < 3.0: server.available()
    if (linkUp) tcp.stop();  // the newest client wins: the old one is likely dead
    tcp = incoming;
    linkUp = true;
    tcp.setNoDelay(true);
    tcp.keepAlive(10, 5, 3);  // notice a vanished gateway within about 25 s
    resetLine();
    stopBurst();
    Serial.printf("# client %s\n", tcp.remoteIP().toString().c_str());
  }
  if (linkUp && !tcp.connected()) {  // connected() stays true while data is unread
    tcp.stop();
    linkUp = false;
    resetLine();
    stopBurst();
    Serial.println("# client gone");
  }
#elif LINK_MODE == LINK_TCP_CLIENT
  if (linkUp && !tcp.connected()) {
    tcp.stop();
    linkUp = false;
    resetLine();
    stopBurst();
    Serial.println("# gateway link lost");
  }
  if (linkUp || !wifiReady() || !retryDue()) return;
  if (tcp.connect(GATEWAY_HOST, TCP_PORT)) {
    linkUp = true;
    backoffMs = 200;
    tcp.setNoDelay(true);
    tcp.keepAlive(10, 5, 3);
    Serial.printf("# connected to %s:%u\n", GATEWAY_HOST, (unsigned)TCP_PORT);
  } else {
    retryLater();
  }
#elif LINK_MODE == LINK_UDP
  wifiReady();
  if (inboxFull) return;
  int size = udp.parsePacket();
  if (size <= 0) return;
  peerIp = udp.remoteIP();  // answer whoever spoke last
  peerPort = udp.remotePort();
  if ((size_t)size > sizeof(inbox)) {
    inboxTooLong = true;  // the next parsePacket() discards it (flush() would send)
    inboxLen = 0;
  } else {
    int got = udp.read(inbox, sizeof(inbox));
    inboxLen = got > 0 ? (size_t)got : 0;
  }
  inboxPos = 0;
  inboxFull = true;
#elif LINK_MODE == LINK_MQTT
  if (mqtt.connected()) {
    if (!inboxFull) mqtt.loop();  // one packet per call: at most one message waits
    return;
  }
  if (mqttUp) {
    mqttUp = false;
    resetLine();
    stopBurst();
    inboxFull = inboxTooLong = false;
    Serial.println("# MQTT link lost");
  }
  if (!wifiReady() || !retryDue()) return;
  char clientId[64];
  snprintf(clientId, sizeof(clientId), "%s-%s-%06x", MQTT_PREFIX, DEVICE_NAME,
           (unsigned)ESP.getChipId());
  // Last will: the broker publishes "offline" (retained) when this link dies.
  if (mqtt.connect(clientId, topicStatus, 1, true, "{\"state\": \"offline\"}")) {
    mqttUp = true;
    backoffMs = 200;
    mqtt.publish(topicStatus, "{\"state\": \"connected\"}", true);
    mqtt.subscribe(topicTx, 1);
    Serial.printf("# MQTT up: %s -> %s\n", topicTx, topicRx);
  } else {
    Serial.printf("# MQTT connect failed, state %d\n", mqtt.state());
    retryLater();
  }
#endif
}

// -- setup and loop ----------------------------------------------------------------------

void setup() {
  pinMode(LED_BUILTIN, OUTPUT);
  setLed(0);
  Serial.setRxBufferSize(MAX_LINE);  // the default 256 bytes overflow during a GO burst
  Serial.begin(BAUDRATE);
#if USE_DHT22
  dht.begin();
#endif
#if LINK_MODE != LINK_SERIAL
  Serial.println();
  startWifi();
#endif
#if LINK_MODE == LINK_TCP_SERVER
  server.begin();
  server.setNoDelay(true);
#elif LINK_MODE == LINK_UDP
  udp.begin(UDP_PORT);
  if (peerIp.fromString(GATEWAY_HOST)) peerPort = GATEWAY_UDP_PORT;
#elif LINK_MODE == LINK_MQTT
  snprintf(topicTx, sizeof(topicTx), "%s/%s/tx", MQTT_PREFIX, DEVICE_NAME);
  snprintf(topicRx, sizeof(topicRx), "%s/%s/rx", MQTT_PREFIX, DEVICE_NAME);
  snprintf(topicStatus, sizeof(topicStatus), "%s/%s/status", MQTT_PREFIX, DEVICE_NAME);
  mqtt.setServer(MQTT_BROKER, MQTT_PORT);
  mqtt.setCallback(onMqttMessage);
  mqtt.setBufferSize(MAX_LINE + 128);  // default 256 bytes would drop longer messages
  mqtt.setStream(discard);             // a longer one still: see Discard above
  mqtt.setKeepAlive(15);
#endif
  resetLine();
  stopBurst();
  startedUs = micros64();
  nextTelemetryUs = startedUs + intervalUs(intervalS);
}

void loop() {
  maintainLink();
  if (burstActive()) {
    sendBurst();
  } else {
    readInput();
    sendTelemetryIfDue();
  }
  yield();  // let the WiFi stack run
}
