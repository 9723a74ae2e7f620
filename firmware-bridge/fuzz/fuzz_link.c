/*
 * libFuzzer harness for the whole device end of the link.
 *
 * Random bytes alone stop at the CRC: almost nothing gets past fb_frame_decode. So the input is
 * read as a program: a device configuration, then operations that each build a VALID frame
 * (correct COBS and CRC) from the next input bytes — HELLO, DATA, DATA_MORE, whole fragmented
 * messages, PING, any type — or inject raw bytes, a damaged frame, an application verdict or a
 * remembered id. That reaches reassembly, delivery, dedupe, TOO_BIG and the HELLO paths.
 * The raw input also goes to the frame decoder, the msgpack skipper and the envelope parser.
 *
 * Checked on every run, beyond AddressSanitizer/UBSan: every frame the device writes decodes,
 * has a device-to-host type and at most FB_TX_PAYLOAD_MAX bytes; its HELLO map reads as 5 keys
 * whose strings are prefixes of the configured ones, at most FB_INFO_STR_MAX bytes, and valid
 * UTF-8 whenever the configured string is; on_message gets a message that lies inside rx_buf or
 * msg_buf and is no larger than the device announced.
 */
#include "fieldgate_bridge.h"

#include <string.h>

struct input {
    const uint8_t *p;
    size_t n;
};

static uint8_t take(struct input *in)
{
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

static size_t take_bytes(struct input *in, uint8_t *out, size_t want)
{
    size_t n = want < in->n ? want : in->n;
    memcpy(out, in->p, n);
    in->p += n;
    in->n -= n;
    return n;
}

static uint32_t take_mid(struct input *in)
{
    uint8_t sel = take(in);
    uint32_t v;
    if (sel < 200)
        return sel & 3u; /* a few ids, so that dedupe and reassembly collide */
    v = (uint32_t)take(in) << 24;
    v |= (uint32_t)take(in) << 16;
    v |= (uint32_t)take(in) << 8;
    return v | take(in);
}

static uint8_t rx[FB_RX_BUF_SIZE + 8], msg_buf[600];
static char fw[48], dev[48];
static struct fb_link link;
static size_t rx_cap, msg_cap;
static uint8_t verdict;
static volatile uint8_t touched;

static int valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        size_t k;
        if (len == 0 || i + len > n)
            return 0;
        for (k = 1; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        i += len;
    }
    return 1;
}

static void check_hello_string(const char *s, uint32_t len, const char *configured)
{
    size_t full = strlen(configured);
    if (len > FB_INFO_STR_MAX || len > full || memcmp(s, configured, len) != 0)
        __builtin_trap();
    if (valid_utf8((const uint8_t *)configured, full) && !valid_utf8((const uint8_t *)s, len))
        __builtin_trap(); /* cut inside a character */
    if (len < full && full <= FB_INFO_STR_MAX)
        __builtin_trap(); /* cut although it fitted */
}

static void check_hello(const struct fb_frame *f)
{
    struct fb_mp_reader r;
    uint32_t count, i, klen, slen;
    const char *k, *s;
    uint64_t v;
    fb_mp_reader_init(&r, f->payload, f->payload_len);
    if (fb_mp_read_map(&r, &count) != 0 || count != 5)
        __builtin_trap();
    for (i = 0; i < count; i++) {
        if (fb_mp_read_str(&r, &k, &klen) != 0)
            __builtin_trap();
        if (klen == 2 && (k[0] == 'f' || k[0] == 'i')) {
            if (fb_mp_read_str(&r, &s, &slen) != 0)
                __builtin_trap();
            check_hello_string(s, slen, k[0] == 'f' ? fw : dev);
        } else if (fb_mp_read_uint(&r, &v) != 0) {
            __builtin_trap();
        }
    }
    if (r.p != r.end)
        __builtin_trap();
}

static void sink(void *ctx, const uint8_t *data, size_t len)
{
    struct fb_frame f;
    uint8_t copy[FB_MAX_WIRE];
    (void)ctx;
    if (len == 1 && data[0] == 0)
        return; /* the boot flush */
    if (len < 2 || len > sizeof copy || data[len - 1] != 0)
        __builtin_trap(); /* one whole frame per write */
    memcpy(copy, data, len - 1);
    if (fb_frame_decode(copy, len - 1, &f) != FB_FRAME_OK || f.payload_len > FB_TX_PAYLOAD_MAX)
        __builtin_trap();
    switch (f.type) {
    case FB_ACK: case FB_NAK: case FB_PONG:
        if (f.payload_len != 0)
            __builtin_trap();
        break;
    case FB_REFUSE:
        if (f.payload_len != 1 || f.payload[0] == FB_OK)
            __builtin_trap();
        break;
    case FB_HELLO: case FB_HELLO_ACK:
        check_hello(&f);
        break;
    default:
        __builtin_trap(); /* the device never sends DATA, PING or other types */
    }
}

static uint8_t on_message(void *ctx, uint32_t mid, const uint8_t *msg, size_t len)
{
    struct fb_envelope env;
    size_t single = (size_t)link.cfg.max_payload - FB_MID_BYTES;
    int in_rx = msg >= rx && msg + len <= rx + rx_cap;
    int in_msg = msg >= msg_buf && msg + len <= msg_buf + msg_cap;
    (void)ctx;
    (void)mid;
    if (!(in_rx || in_msg) || len > (msg_cap > single ? msg_cap : single))
        __builtin_trap();
    if (len > 0)
        touched ^= (uint8_t)(msg[0] ^ msg[len - 1]); /* touch both ends: ASan knows the bounds */
    if (fb_envelope_parse(msg, len, &env) == 0 && (env.body_len > len || env.id_len > len))
        __builtin_trap();
    if (verdict == 0xFF)
        return fb_envelope_parse(msg, len, &env) == 0 ? FB_OK : FB_BAD_MESSAGE;
    return verdict;
}

/* Feed one frame whole or split at an input-chosen point. */
static void feed(struct input *in, const uint8_t *wire, size_t n)
{
    size_t at = n ? take(in) % (n + 1) : 0;
    fb_link_feed(&link, wire, at);
    fb_link_feed(&link, wire + at, n - at);
}

static void send(struct input *in, uint8_t type, uint8_t seq, const uint8_t *p, size_t len)
{
    uint8_t wire[FB_MAX_WIRE];
    size_t n = fb_frame_encode(type, seq, p, len, wire, sizeof wire);
    feed(in, wire, n);
}

static void send_data(struct input *in, uint8_t type, uint8_t seq, uint32_t mid, size_t len)
{
    uint8_t p[FB_MAX_PAYLOAD];
    p[0] = (uint8_t)(mid >> 24);
    p[1] = (uint8_t)(mid >> 16);
    p[2] = (uint8_t)(mid >> 8);
    p[3] = (uint8_t)mid;
    len = FB_MID_BYTES + take_bytes(in, p + FB_MID_BYTES, len);
    send(in, type, seq, p, len);
}

/* A whole message split as the host splits it: fragments of max_payload - 4, stop-and-wait. */
static void send_message(struct input *in, uint8_t *seq)
{
    size_t frag = (size_t)link.cfg.max_payload - FB_MID_BYTES;
    size_t total = (size_t)take(in) * 3u, sent = 0;
    uint32_t mid = take_mid(in);
    do {
        size_t len = total - sent < frag ? total - sent : frag;
        int last = sent + len >= total;
        send_data(in, last ? FB_DATA : FB_DATA_MORE, (*seq)++, mid, len);
        sent += len;
    } while (sent < total && in->n > 0);
}

/* COBS round trip of an input chunk. */
static void cobs_round_trip(struct input *in)
{
    uint8_t raw[300], enc[310], dec[300];
    size_t n = take_bytes(in, raw, (size_t)take(in) + take(in) % 45u), e;
    long d;
    e = fb_cobs_encode(raw, n, enc, sizeof enc);
    if (e == 0 || memchr(enc, 0, e) != NULL)
        __builtin_trap();
    d = fb_cobs_decode(enc, e, dec, sizeof dec);
    if (d != (long)n || memcmp(dec, raw, n) != 0)
        __builtin_trap();
    if (fb_cobs_encode(raw, n, enc, take(in) % e) != 0)
        __builtin_trap(); /* a buffer one byte short is refused, never overrun */
}

/* The msgpack writer's output reads back with the reader; the envelope parser on a chunk. */
static void msgpack_round_trip(struct input *in)
{
    uint8_t out[80], chunk[200];
    struct fb_mp_writer w;
    struct fb_mp_reader r;
    struct fb_envelope env;
    uint32_t count, u, len;
    uint64_t v;
    const char *s;
    size_t slen = take(in) % 70u, n;
    char text[70];
    memset(text, 'a', sizeof text);
    count = (uint32_t)take(in) << (take(in) % 24u);
    u = (uint32_t)take(in) << (take(in) % 25u);
    fb_mp_writer_init(&w, out, take(in) % sizeof out);
    fb_mp_write_map(&w, count);
    fb_mp_write_str(&w, text, slen);
    fb_mp_write_uint(&w, u);
    n = fb_mp_writer_len(&w, out);
    if (n > 0) {
        fb_mp_reader_init(&r, out, n);
        if (fb_mp_read_map(&r, &count) != 0 || fb_mp_read_str(&r, &s, &len) != 0 || len != slen ||
            fb_mp_read_uint(&r, &v) != 0 || v != u || r.p != r.end)
            __builtin_trap();
    }
    n = take_bytes(in, chunk, take(in) % sizeof chunk);
    if (fb_envelope_parse(chunk, n, &env) == 0 &&
        (env.body_len > n || env.id_len > n || env.route_len > n))
        __builtin_trap();
    fb_mp_reader_init(&r, chunk, n);
    while (fb_mp_skip(&r) == 0 && r.p < r.end) {
    }
}

static void take_string(struct input *in, char *out, size_t cap)
{
    size_t n = take(in) % cap, i;
    for (i = 0; i < n; i++)
        out[i] = (char)(take(in) | 0x01); /* no NUL inside */
    out[n] = '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t caps[] = {0, 24, 60, 200, sizeof msg_buf};
    struct input in = {data, size};
    struct fb_link_config cfg;
    struct fb_frame frame;
    struct fb_envelope env;
    struct fb_mp_reader r;
    uint8_t buf[FB_MAX_WIRE + 64], p[64], seq = 0;
    size_t n = size < sizeof buf ? size : sizeof buf;

    memcpy(buf, data, n);
    (void)fb_frame_decode(buf, n, &frame);
    (void)fb_envelope_parse(data, size, &env);
    fb_mp_reader_init(&r, data, size);
    (void)fb_mp_skip(&r);

    memset(&cfg, 0, sizeof cfg);
    cfg.max_payload = (uint8_t)(FB_MID_BYTES + 1u + take(&in) % (FB_MAX_PAYLOAD - FB_MID_BYTES));
    msg_cap = caps[take(&in) % 5];
    rx_cap = FB_RX_BUF_FOR(cfg.max_payload) + (take(&in) & 7u);
    take_string(&in, fw, sizeof fw);
    take_string(&in, dev, sizeof dev);
    cfg.rx_buf = rx;
    cfg.rx_cap = rx_cap;
    cfg.msg_buf = msg_cap ? msg_buf : NULL;
    cfg.msg_cap = msg_cap;
    cfg.firmware = fw;
    cfg.device_id = dev;
    cfg.on_message = on_message;
    cfg.write = sink;
    verdict = FB_OK;
    if (fb_link_init(&link, &cfg) != 0)
        __builtin_trap(); /* the configuration above is always valid */
    if (take(&in) & 1u)
        fb_link_boot(&link);

    while (in.n > 0) {
        uint8_t op = take(&in) % 14u;
        switch (op) {
        case 0: { /* raw bytes: garbage, partial frames, oversized runs */
            size_t len = take_bytes(&in, buf, take(&in));
            fb_link_feed(&link, buf, len);
            break;
        }
        case 1: /* HELLO with an arbitrary map */
            send(&in, FB_HELLO, take(&in), p, take_bytes(&in, p, take(&in) % sizeof p));
            break;
        case 2:
        case 3: /* DATA / DATA_MORE, usually within max_payload, sometimes beyond */
            send_data(&in, op == 2 ? FB_DATA : FB_DATA_MORE, take(&in), take_mid(&in),
                      take(&in) % (FB_MAX_PAYLOAD - FB_MID_BYTES + 1u));
            break;
        case 4:
            send(&in, FB_PING, take(&in), NULL, 0);
            break;
        case 5: /* any type, any short payload (DATA shorter than a mid, device types, ...) */
            send(&in, (uint8_t)(take(&in) & 0x0Fu), take(&in), p,
                 take_bytes(&in, p, take(&in) % 8u));
            break;
        case 12: { /* a well-formed frame of another protocol version */
            uint8_t body[16], wire[20];
            size_t len = 2 + take_bytes(&in, body + 2, take(&in) % 10u), m;
            uint16_t crc;
            body[0] = (uint8_t)(take(&in) | 0x20u); /* version 2 or more in the high nibble */
            body[1] = take(&in);
            crc = fb_crc16(body, len);
            body[len] = (uint8_t)(crc >> 8);
            body[len + 1] = (uint8_t)crc;
            m = fb_cobs_encode(body, len + 2, wire, sizeof wire - 1);
            wire[m] = 0;
            feed(&in, wire, m + 1);
            break;
        }
        case 6: { /* a damaged frame: one bit flipped anywhere but the delimiter */
            uint8_t wire[FB_MAX_WIRE];
            size_t len = take_bytes(&in, p, take(&in) % 16u), m;
            m = fb_frame_encode(FB_DATA, take(&in), p, len, wire, sizeof wire);
            wire[take(&in) % (m - 1)] ^= (uint8_t)(1u << (take(&in) & 7u));
            feed(&in, wire, m);
            break;
        }
        case 7: { /* the application's next verdicts */
            static const uint8_t verdicts[] = {FB_OK, FB_BUSY, FB_BAD_MESSAGE, 0x81, 0xFF};
            verdict = verdicts[take(&in) % sizeof verdicts];
            break;
        }
        case 8:
            fb_link_remember(&link, take_mid(&in), take(&in) & 0x83u);
            break;
        case 9:
            send_message(&in, &seq);
            break;
        case 10:
            cobs_round_trip(&in);
            break;
        case 11:
            msgpack_round_trip(&in);
            break;
        default: /* 13: a retransmission of the last seq used by send_message */
            send_data(&in, FB_DATA, (uint8_t)(seq - 1u), take_mid(&in), take(&in) % 16u);
            break;
        }
    }
    return 0;
}
