/* libFuzzer harness: arbitrary bytes into the frame decoder, the link and the msgpack reader.
 * Small integrator buffers make overruns show up under AddressSanitizer. */
#include "fieldgate_bridge.h"

#include <string.h>

static uint8_t last_msg_byte;

static uint8_t on_message(void *ctx, uint32_t mid, const uint8_t *msg, size_t len)
{
    struct fb_envelope env;
    (void)ctx;
    (void)mid;
    if (len > 0)
        last_msg_byte ^= msg[len - 1]; /* touch the whole range ASan knows about */
    return fb_envelope_parse(msg, len, &env) == 0 ? FB_OK : FB_BAD_MESSAGE;
}

static void sink(void *ctx, const uint8_t *data, size_t len)
{
    struct fb_frame f;
    uint8_t copy[FB_MAX_WIRE];
    (void)ctx;
    /* everything the device writes must itself be a valid frame */
    if (len >= 2 && len <= sizeof copy && data[len - 1] == 0 && data[0] != 0) {
        memcpy(copy, data, len - 1);
        if (fb_frame_decode(copy, len - 1, &f) != FB_FRAME_OK)
            __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t rx[40], msg[24];
    uint8_t buf[FB_MAX_WIRE + 64];
    struct fb_link link;
    struct fb_link_config cfg;
    struct fb_frame frame;
    struct fb_envelope env;
    size_t n = size < sizeof buf ? size : sizeof buf;

    memcpy(buf, data, n);
    (void)fb_frame_decode(buf, n, &frame);
    (void)fb_envelope_parse(data, size, &env);

    memset(&cfg, 0, sizeof cfg);
    cfg.rx_buf = rx;
    cfg.rx_cap = sizeof rx;
    cfg.msg_buf = msg;
    cfg.msg_cap = sizeof msg;
    cfg.max_payload = 16;
    cfg.firmware = "fuzz";
    cfg.device_id = "fuzz-device-with-a-long-identifier-to-cut";
    cfg.on_message = on_message;
    cfg.write = sink;
    if (fb_link_init(&link, &cfg) != 0)
        return 0;
    fb_link_boot(&link);
    /* the fuzzer's bytes, but with a session open so DATA paths are reached */
    {
        static const uint8_t hello[] = {0x02, 0x14, 0x0c, 0x82, 0xa1, 0x76, 0x01, 0xa2,
                                        0x6d, 0x70, 0xcc, 0xfa, 0xc3, 0xa9, 0x00};
        fb_link_feed(&link, hello, sizeof hello);
    }
    fb_link_feed(&link, data, size);
    return 0;
}
