// fieldgate firmware-bridge on an Arduino Uno: messages from the gateway arrive on Serial, and
// a body of "on" / "off" switches the LED. Install the library first (README.md beside this
// sketch); `make -C firmware-bridge test` builds this sketch against Debian's Arduino core.
//
// RAM, measured (README "Footprint"): the link state, a receive buffer sized to the frames this
// sketch announces, a small reassembly buffer, no heap.
#include <fieldgate_bridge.h>

// Frames of at most 58 payload bytes are 64 bytes on the wire: one fits the core's 64-byte
// serial receive ring even while loop() is busy, and the frame buffer needs only 63 bytes.
static const uint8_t kMaxPayload = 58;
static uint8_t rxFrame[FB_RX_BUF_FOR(kMaxPayload)];
// Messages up to 54 bytes are handed over straight from rxFrame; longer ones are reassembled
// here. 96 bytes hold the envelope of a short command with a route name of up to ~40
// characters; anything longer is refused with TOO_BIG and dead-lettered by the gateway.
static uint8_t message[96];
static struct fb_link link;

static void uartWrite(void *, const uint8_t *data, size_t len) { Serial.write(data, len); }

static uint8_t onMessage(void *, uint32_t, const uint8_t *msg, size_t len) {
  struct fb_envelope env;
  if (fb_envelope_parse(msg, len, &env) != 0) return FB_BAD_MESSAGE;
  // msg (and env's pointers into it) are valid only until we return: act on them now.
  if (env.body_len == 2 && memcmp(env.body, "on", 2) == 0) {
    digitalWrite(LED_BUILTIN, HIGH);
  } else if (env.body_len == 3 && memcmp(env.body, "off", 3) == 0) {
    digitalWrite(LED_BUILTIN, LOW);
  } else {
    return 0x80;  // application code: unknown command (the gateway dead-letters it)
  }
  return FB_OK;
}

void setup() {
  pinMode(LED_BUILTIN, OUTPUT);
  Serial.begin(115200);
  struct fb_link_config cfg = {};
  cfg.rx_buf = rxFrame;
  cfg.rx_cap = sizeof rxFrame;
  cfg.msg_buf = message;
  cfg.msg_cap = sizeof message;
  cfg.max_payload = kMaxPayload;
  cfg.firmware = "arduino-demo-1.1";
  cfg.device_id = "uno-01";
  cfg.on_message = onMessage;
  cfg.write = uartWrite;
  fb_link_init(&link, &cfg);
  fb_link_boot(&link);
}

void loop() {
  // One context feeds the link (never from an interrupt or a callback): the core's serial
  // interrupt fills its ring, and we drain it here.
  while (Serial.available() > 0) {
    uint8_t b = (uint8_t)Serial.read();
    fb_link_feed(&link, &b, 1);
  }
}
