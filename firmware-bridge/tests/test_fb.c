/* Host unit tests of the firmware-bridge library against vectors/link.txt and link scenarios. */
#include "fieldgate_bridge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, checks;

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        checks++;                                                                                 \
        if (!(cond)) {                                                                            \
            failures++;                                                                           \
            fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond);                          \
            fprintf(stderr, __VA_ARGS__);                                                         \
            fputc('\n', stderr);                                                                  \
        }                                                                                         \
    } while (0)

static size_t unhex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0;
    if (strcmp(s, "-") == 0)
        return 0;
    while (s[0] && s[1] && n < cap) {
        unsigned v;
        if (sscanf(s, "%2x", &v) != 1)
            break;
        out[n++] = (uint8_t)v;
        s += 2;
    }
    return n;
}

static uint8_t a[4096], b[4096], c[4096];

static void vector_line(char *line)
{
    char *kind = strtok(line, " \n");
    char *f[8] = {0};
    int i;
    if (!kind || kind[0] == '#')
        return;
    for (i = 0; i < 8; i++)
        f[i] = strtok(NULL, " \n");
    if (strcmp(kind, "crc16") == 0) {
        size_t n = unhex(f[0], a, sizeof a);
        CHECK(fb_crc16(a, n) == strtoul(f[1], NULL, 16), "crc16 %s", f[0]);
    } else if (strcmp(kind, "cobs") == 0) {
        size_t n = unhex(f[0], a, sizeof a), m = unhex(f[1], b, sizeof b), e;
        long d;
        e = fb_cobs_encode(a, n, c, sizeof c);
        CHECK(e == m && memcmp(c, b, m) == 0, "cobs encode of %zu bytes", n);
        d = fb_cobs_decode(b, m, c, sizeof c);
        CHECK(d == (long)n && memcmp(c, a, n) == 0, "cobs decode of %zu bytes", n);
        d = fb_cobs_decode(b, m, b, m); /* in place */
        CHECK(d == (long)n && memcmp(b, a, n) == 0, "cobs decode in place, %zu bytes", n);
    } else if (strcmp(kind, "frame") == 0) {
        unsigned type = (unsigned)atoi(f[1]), seq = (unsigned)atoi(f[2]);
        size_t n = unhex(f[3], a, sizeof a), m = unhex(f[4], b, sizeof b), e;
        struct fb_frame fr;
        e = fb_frame_encode((uint8_t)type, (uint8_t)seq, a, n, c, sizeof c);
        CHECK(e == m && memcmp(c, b, m) == 0, "frame %s encodes", f[0]);
        CHECK(fb_frame_decode(b, m - 1, &fr) == FB_FRAME_OK, "frame %s decodes", f[0]);
        CHECK(fr.type == type && fr.seq == seq && fr.payload_len == n &&
                  memcmp(fr.payload, a, n) == 0,
              "frame %s fields", f[0]);
    } else if (strcmp(kind, "bad") == 0) {
        size_t m = unhex(f[2], b, sizeof b), end = 0;
        struct fb_frame fr;
        int want = strcmp(f[1], "crc") == 0       ? FB_FRAME_CRC
                   : strcmp(f[1], "version") == 0 ? FB_FRAME_VERSION
                   : strcmp(f[1], "short") == 0   ? FB_FRAME_SHORT
                   : strcmp(f[1], "cobs") == 0    ? FB_FRAME_COBS
                                                  : FB_FRAME_OVERSIZE;
        while (end < m && b[end] != 0)
            end++;
        CHECK(fb_frame_decode(b, end, &fr) == want, "bad %s is rejected as %s", f[0], f[1]);
    } else if (strcmp(kind, "hello_ack") == 0) {
        size_t n = unhex(f[0], a, sizeof a);
        struct fb_mp_reader r;
        uint32_t count, i2, klen, slen;
        const char *k, *s;
        uint64_t v;
        int seen = 0;
        fb_mp_reader_init(&r, a, n);
        CHECK(fb_mp_read_map(&r, &count) == 0 && count == 5, "hello map");
        for (i2 = 0; i2 < count; i2++) {
            CHECK(fb_mp_read_str(&r, &k, &klen) == 0, "hello key");
            if (klen == 2 && memcmp(k, "fw", 2) == 0) {
                CHECK(fb_mp_read_str(&r, &s, &slen) == 0 && slen == strlen(f[4]) &&
                          memcmp(s, f[4], slen) == 0, "fw");
                seen++;
            } else if (klen == 2 && memcmp(k, "id", 2) == 0) {
                CHECK(fb_mp_read_str(&r, &s, &slen) == 0 && slen == strlen(f[5]) &&
                          memcmp(s, f[5], slen) == 0, "id");
                seen++;
            } else {
                CHECK(fb_mp_read_uint(&r, &v) == 0, "uint value");
                if (klen == 2 && memcmp(k, "mp", 2) == 0)
                    CHECK(v == strtoull(f[2], NULL, 10), "mp");
                if (klen == 2 && memcmp(k, "mm", 2) == 0)
                    CHECK(v == strtoull(f[3], NULL, 10), "mm");
            }
        }
        CHECK(seen == 2 && r.p == r.end, "hello strings read, nothing left");
    } else if (strcmp(kind, "envelope") == 0) {
        size_t n = unhex(f[0], a, sizeof a), bl = unhex(f[5], b, sizeof b), cut;
        struct fb_envelope env;
        CHECK(fb_envelope_parse(a, n, &env) == 0, "envelope %s parses", f[1]);
        CHECK(env.id_len == strlen(f[1]) && memcmp(env.id, f[1], env.id_len) == 0, "id");
        CHECK(env.route_len == strlen(f[2]) && memcmp(env.route, f[2], env.route_len) == 0,
              "route");
        CHECK(env.rcv == strtoull(f[3], NULL, 10), "rcv");
        CHECK(env.exp == (strcmp(f[4], "-") == 0 ? 0 : strtoull(f[4], NULL, 10)), "exp");
        CHECK(env.body_len == bl && memcmp(env.body, b, bl) == 0, "body");
        for (cut = 0; cut < n; cut++) /* every truncation is refused, never overrun */
            CHECK(fb_envelope_parse(a, cut, &env) == -1, "truncated envelope at %zu", cut);
    } else {
        CHECK(0, "unknown vector kind %s", kind);
    }
}

/* ---- link scenarios ------------------------------------------------------------------------ */

struct capture {
    uint8_t out[8192];
    size_t out_len;
    uint32_t mids[64];
    size_t lens[64];
    int calls;
    uint8_t result;
};

static void cap_write(void *ctx, const uint8_t *data, size_t len)
{
    struct capture *cp = ctx;
    if (cp->out_len + len <= sizeof cp->out) {
        memcpy(cp->out + cp->out_len, data, len);
        cp->out_len += len;
    }
}

static uint8_t cap_message(void *ctx, uint32_t mid, const uint8_t *msg, size_t len)
{
    struct capture *cp = ctx;
    (void)msg;
    if (cp->calls < 64) {
        cp->mids[cp->calls] = mid;
        cp->lens[cp->calls] = len;
    }
    cp->calls++;
    return cp->result;
}

/* The type and seq of the last frame the device wrote. */
static int last_answer(struct capture *cp, struct fb_frame *fr)
{
    size_t end = cp->out_len, start;
    static uint8_t tmp[300];
    if (end < 2)
        return -1;
    start = end - 1;
    while (start > 0 && cp->out[start - 1] != 0)
        start--;
    memcpy(tmp, cp->out + start, end - 1 - start);
    return fb_frame_decode(tmp, end - 1 - start, fr);
}

static void feed_frame(struct fb_link *l, uint8_t type, uint8_t seq, const uint8_t *p, size_t n)
{
    uint8_t wire[300];
    size_t m = fb_frame_encode(type, seq, p, n, wire, sizeof wire);
    fb_link_feed(l, wire, m);
}

static void link_scenarios(void)
{
    static uint8_t rx[FB_RX_BUF_SIZE], msg[40];
    static struct capture cp;
    struct fb_link link;
    struct fb_link_config cfg;
    struct fb_frame fr;
    uint8_t p[64] = {0, 0, 0, 7, 'h', 'i'};
    uint8_t wire[300];
    size_t m, i;

    memset(&cfg, 0, sizeof cfg);
    cfg.rx_buf = rx;
    cfg.rx_cap = sizeof rx;
    cfg.msg_buf = msg;
    cfg.msg_cap = sizeof msg;
    cfg.max_payload = 16;
    cfg.firmware = "1.0.0";
    cfg.device_id = "test";
    cfg.on_message = cap_message;
    cfg.write = cap_write;
    cfg.ctx = &cp;
    CHECK(fb_link_init(&link, &cfg) == 0, "init");
    fb_link_boot(&link);
    CHECK(last_answer(&cp, &fr) == 0 && fr.type == FB_HELLO, "boot HELLO");

    feed_frame(&link, FB_DATA, 0, p, 6);
    CHECK(cp.calls == 0 && last_answer(&cp, &fr) == 0 && fr.type == FB_HELLO,
          "DATA before the host's HELLO is answered with HELLO, not processed");

    feed_frame(&link, FB_HELLO, 0, (const uint8_t *)"\x82\xa1v\x01\xa2mp\xcc\xfa", 9);
    CHECK(last_answer(&cp, &fr) == 0 && fr.type == FB_HELLO_ACK, "HELLO_ACK");

    feed_frame(&link, FB_DATA, 0, p, 6);
    CHECK(cp.calls == 1 && cp.mids[0] == 7 && cp.lens[0] == 2, "message delivered once");
    CHECK(last_answer(&cp, &fr) == 0 && fr.type == FB_ACK && fr.seq == 0, "ACK seq 0");

    feed_frame(&link, FB_DATA, 0, p, 6);
    CHECK(cp.calls == 1 && last_answer(&cp, &fr) == 0 && fr.type == FB_ACK,
          "retransmission (same seq) re-ACKed, not processed");

    feed_frame(&link, FB_HELLO, 0, (const uint8_t *)"\x82\xa1v\x01\xa2mp\xcc\xfa", 9);
    feed_frame(&link, FB_DATA, 0, p, 6);
    CHECK(cp.calls == 1 && last_answer(&cp, &fr) == 0 && fr.type == FB_ACK,
          "same message id after a new session: deduped by id");

    /* fragments: 12 + 12 + 6 bytes into a 40-byte buffer */
    p[3] = 8;
    memset(p + 4, 'x', 12);
    feed_frame(&link, FB_DATA_MORE, 1, p, 16);
    feed_frame(&link, FB_DATA_MORE, 1, p, 16); /* a retransmission must not be appended */
    feed_frame(&link, FB_DATA_MORE, 2, p, 16);
    feed_frame(&link, FB_DATA, 3, p, 10);
    CHECK(cp.calls == 2 && cp.mids[1] == 8 && cp.lens[1] == 30, "reassembled 30 bytes once");

    /* too big: the 4th fragment of 12 exceeds 40 */
    p[3] = 9;
    for (i = 0; i < 4; i++)
        feed_frame(&link, FB_DATA_MORE, (uint8_t)(4 + i), p, 16);
    CHECK(last_answer(&cp, &fr) == 0 && fr.type == FB_REFUSE && fr.payload[0] == FB_TOO_BIG,
          "oversized message refused with TOO_BIG");
    CHECK(cp.calls == 2, "nothing delivered for it");

    /* application refusal is remembered and repeated */
    p[3] = 10;
    cp.result = 0x81;
    feed_frame(&link, FB_DATA, 8, p, 6);
    CHECK(cp.calls == 3 && last_answer(&cp, &fr) == 0 && fr.type == FB_REFUSE &&
              fr.payload_len == 1 && fr.payload[0] == 0x81, "REFUSE with the app's code");
    cp.result = 0;
    feed_frame(&link, FB_DATA, 9, p, 6);
    CHECK(cp.calls == 3 && last_answer(&cp, &fr) == 0 && fr.type == FB_REFUSE,
          "refused id refused again without a callback");

    /* busy is not remembered */
    p[3] = 11;
    cp.result = FB_BUSY;
    feed_frame(&link, FB_DATA, 10, p, 6);
    cp.result = 0;
    feed_frame(&link, FB_DATA, 11, p, 6);
    CHECK(cp.calls == 5 && last_answer(&cp, &fr) == 0 && fr.type == FB_ACK,
          "BUSY message processed again on retry");

    /* damaged frame: NAK, and nothing delivered */
    p[3] = 12;
    m = fb_frame_encode(FB_DATA, 12, p, 6, wire, sizeof wire);
    wire[3] ^= 0x40;
    fb_link_feed(&link, wire, m);
    CHECK(cp.calls == 5 && last_answer(&cp, &fr) == 0 && fr.type == FB_NAK, "NAK on CRC error");

    /* a frame split into single bytes, with garbage and an oversized run before it */
    memset(wire, 0x55, 280);
    wire[280] = 0;
    fb_link_feed(&link, wire, 281);
    m = fb_frame_encode(FB_DATA, 13, p, 6, wire, sizeof wire);
    for (i = 0; i < m; i++)
        fb_link_feed(&link, wire + i, 1);
    CHECK(cp.calls == 6 && link.stats.rx_oversize == 1, "resync after an oversized run");

    /* PING */
    feed_frame(&link, FB_PING, 42, NULL, 0);
    CHECK(last_answer(&cp, &fr) == 0 && fr.type == FB_PONG && fr.seq == 42, "PONG");

    /* remembered ids survive a re-init through fb_link_remember */
    CHECK(fb_link_init(&link, &cfg) == 0, "re-init");
    fb_link_remember(&link, 12, FB_OK);
    feed_frame(&link, FB_HELLO, 0, (const uint8_t *)"\x82\xa1v\x01\xa2mp\xcc\xfa", 9);
    feed_frame(&link, FB_DATA, 0, p, 6);
    CHECK(cp.calls == 6 && last_answer(&cp, &fr) == 0 && fr.type == FB_ACK,
          "id restored from non-volatile memory is deduped after reboot");

    cfg.rx_cap = 10;
    CHECK(fb_link_init(&link, &cfg) == -1, "rx buffer too small for max_payload refused");
}

int main(int argc, char **argv)
{
    char line[8192];
    FILE *fp = fopen(argc > 1 ? argv[1] : "vectors/link.txt", "r");
    int vectors = 0;
    if (!fp) {
        perror("vectors");
        return 2;
    }
    while (fgets(line, sizeof line, fp)) {
        if (line[0] != '#' && line[0] != '\n')
            vectors++;
        vector_line(line);
    }
    fclose(fp);
    CHECK(vectors >= 30, "read %d vectors", vectors);
    link_scenarios();
    printf("test_fb: %d checks, %d failures (%d vectors)\n", checks, failures, vectors);
    return failures ? 1 : 0;
}
