// fieldgate firmware-bridge on an Arduino: messages from the gateway arrive on Serial.
//
// Copy include/fieldgate_bridge.h and src/*.c into this sketch folder (or a library folder);
// the Arduino IDE compiles C files alongside the sketch. RAM: ~255 B receive + the message
// buffer + ~200 B link state, no heap.
extern "C" {
#include "fieldgate_bridge.h"
}

static uint8_t rxFrame[FB_RX_BUF_SIZE];
static uint8_t message[256];  // largest message accepted; bigger ones are refused (TOO_BIG)
static struct fb_link link;

static void uartWrite(void *, const uint8_t *data, size_t len) { Serial.write(data, len); }

static uint8_t onMessage(void *, uint32_t, const uint8_t *msg, size_t len) {
  struct fb_envelope env;
  if (fb_envelope_parse(msg, len, &env) != 0) return FB_BAD_MESSAGE;
  // Example action: a body of "on" / "off" drives the LED; anything else is refused.
  if (env.body_len == 2 && memcmp(env.body, "on", 2) == 0) {
    digitalWrite(LED_BUILTIN, HIGH);
  } else if (env.body_len == 3 && memcmp(env.body, "off", 3) == 0) {
    digitalWrite(LED_BUILTIN, LOW);
  } else {
    return 0x80;  // application code: unknown command
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
  cfg.max_payload = 60;  // AVR: keep frames within the 64-byte hardware serial RX buffer
  cfg.firmware = "arduino-demo-1.0";
  cfg.device_id = "uno-01";
  cfg.on_message = onMessage;
  cfg.write = uartWrite;
  fb_link_init(&link, &cfg);
  fb_link_boot(&link);
}

void loop() {
  while (Serial.available() > 0) {
    uint8_t b = (uint8_t)Serial.read();
    fb_link_feed(&link, &b, 1);
  }
}
