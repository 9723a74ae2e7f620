/*
 * The library's tests: every record of the shared vector files (vectors/link.txt and
 * vectors/transcripts.txt, PROTOCOL.md §9) and link scenarios that need to look inside it.
 *
 * One source for two machines. On the host: `test_fb FILE...`, built with sanitizers. On an
 * ATmega328P (2 KB of RAM, run in simavr by `make test`): the vector files are linked into
 * flash and streamed from there, results go to the UART. So records are parsed a field at a
 * time, straight from the source, and the buffers are small and shared.
 */
#include "fieldgate_bridge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __AVR__
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/pgmspace.h>
#include <avr/sleep.h>
#define FSTR(s) PSTR(s)
#define FLASH_FMT "%S"
#else
#define FSTR(s) (s)
#define FLASH_FMT "%s"
#define printf_P printf
#define strcmp_P strcmp
#endif

static unsigned long checks, failures, vectors;
static char where[40]; /* the record being checked, for failure messages */

static void check(int ok, const char *cond, const char *msg, int line)
{
    checks++;
    if (ok)
        return;
    failures++;
    printf_P(FSTR("test_fb.c:%d: " FLASH_FMT ": " FLASH_FMT " [%s]\n"), line, cond, msg, where);
}

#ifdef __AVR__ /* flash is short: the line and the message say enough */
#define CHECK(cond, msg) check((cond) != 0, FSTR(""), FSTR(msg), __LINE__)
#else
#define CHECK(cond, msg) check((cond) != 0, FSTR(#cond), FSTR(msg), __LINE__)
#endif

/* ---- streaming the vector text ------------------------------------------------------------- */

#ifdef __AVR__
static const char *src_at, *src_end; /* flash addresses */
static int src_raw(void)
{
    return src_at < src_end ? (int)pgm_read_byte(src_at++) : -1;
}
#else
static FILE *src_fp;
static int src_raw(void)
{
    return fgetc(src_fp);
}
#endif

static int pushed = -2;

/* Packed vectors (test_fb --pack, for the AVR build's flash): a long hex token becomes PACKED,
 * a 2-byte big-endian length and the raw bytes. Every reader below accepts both forms. */
#define PACKED 0x01
#define PACK_MIN_CHARS 8u
static unsigned packed_left; /* raw bytes left in the packed token being read */

static int src_getc(void)
{
    int c = pushed;
    if (c != -2) {
        pushed = -2;
        return c;
    }
    return src_raw();
}

static void src_unget(int c)
{
    pushed = c;
}

/* Skip blanks; returns the next character without consuming it ('\n' or -1 at the line's end). */
static int field_start(void)
{
    int c;
    do
        c = src_getc();
    while (c == ' ' || c == '\t' || c == '\r');
    src_unget(c);
    return c;
}

static int have_field(void)
{
    int c = field_start();
    return c != '\n' && c != -1;
}

static unsigned packed_length(void)
{
    unsigned hi = (unsigned)src_getc();
    return hi << 8 | (unsigned)src_getc();
}

static void skip_line(void)
{
    int c;
    for (;;) {
        c = src_getc();
        if (c == '\n' || c == -1)
            return;
        if (c == PACKED) /* its bytes may hold '\n' */
            for (packed_left = packed_length(); packed_left > 0; packed_left--)
                src_getc();
    }
}

/* A word into buf (NUL-terminated, cut to cap - 1); returns its full length. */
static size_t field_word(char *buf, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    size_t n = 0;
    int c;
    if (field_start() == PACKED) { /* a packed token reads back as its hex text */
        src_getc();
        for (packed_left = packed_length(); packed_left > 0; packed_left--) {
            c = src_getc();
            if (n + 2 < cap) {
                buf[n] = digits[(c >> 4) & 15];
                buf[n + 1] = digits[c & 15];
            }
            n += 2;
        }
        buf[n < cap ? n : cap - 1] = '\0';
        return n;
    }
    while ((c = src_getc()) != -1 && c != ' ' && c != '\t' && c != '\n' && c != '\r') {
        if (n + 1 < cap)
            buf[n] = (char)c;
        n++;
    }
    src_unget(c);
    buf[n < cap ? n : cap - 1] = '\0';
    return n;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The next hex byte of the current field, or -1 at its end ('-' is the empty field). */
static int hex_next(void)
{
    int c, hi, lo;
    if (packed_left > 0) {
        packed_left--;
        return src_getc();
    }
    c = src_getc();
    if (c == PACKED) {
        packed_left = packed_length();
        return hex_next();
    }
    if (c == '-')
        c = src_getc();
    hi = hexval(c);
    if (hi < 0) {
        src_unget(c);
        return -1;
    }
    lo = hexval(src_getc());
    CHECK(lo >= 0, "hex field has an even number of digits");
    return hi << 4 | (lo < 0 ? 0 : lo);
}

/* A hex field into buf; returns its length (checked to fit). */
static size_t field_hex(uint8_t *buf, size_t cap)
{
    size_t n = 0;
    int b;
    field_start();
    while ((b = hex_next()) >= 0) {
        if (n < cap)
            buf[n] = (uint8_t)b;
        n++;
    }
    CHECK(n <= cap, "hex field fits the test's buffer");
    return n < cap ? n : cap;
}

/* Compare a hex field with len bytes at p without storing it. */
static int field_hex_equals(const uint8_t *p, size_t len)
{
    size_t n = 0;
    int b, same = 1;
    field_start();
    while ((b = hex_next()) >= 0) {
        if (n >= len || p[n] != (uint8_t)b)
            same = 0;
        n++;
    }
    return same && n == len;
}

static unsigned long field_ulong(int base)
{
    char w[24];
    field_word(w, sizeof w);
    return strtoul(w, NULL, base);
}

/* ---- buffers, shared by every test in turn --------------------------------------------------- */

static uint8_t a[360], b[260], c[260];

/* What the device wrote since the last look, and what the application saw. */
struct capture {
    uint8_t *out;
    size_t cap, len;
    int overflow;
    unsigned calls;
    uint32_t last_mid;
    size_t last_len;
    uint8_t result; /* for the scenario application */
};

static void cap_write(void *ctx, const uint8_t *data, size_t len)
{
    struct capture *cp = ctx;
    if (cp->len + len <= cp->cap) {
        memcpy(cp->out + cp->len, data, len);
        cp->len += len;
    } else {
        cp->overflow = 1;
    }
}

static int contains(const uint8_t *msg, size_t len, const char *word)
{
    size_t k = strlen(word), i;
    for (i = 0; i + k <= len; i++)
        if (memcmp(msg + i, word, k) == 0)
            return 1;
    return 0;
}

/* The vector application (PROTOCOL.md §9; fbsim with --refuse-containing refuse
 * --busy-containing busy behaves the same): a message that starts like a msgpack map must be an
 * envelope, "refuse" anywhere is refused with 0x81, "busy" anywhere is BUSY. */
static uint8_t vector_app(void *ctx, uint32_t mid, const uint8_t *msg, size_t len)
{
    struct capture *cp = ctx;
    struct fb_envelope env;
    cp->calls++;
    cp->last_mid = mid;
    cp->last_len = len;
    if (len > 0 && ((msg[0] & 0xF0u) == 0x80u || msg[0] == 0xDE || msg[0] == 0xDF) &&
        fb_envelope_parse(msg, len, &env) != 0)
        return FB_BAD_MESSAGE;
    if (contains(msg, len, "refuse"))
        return 0x81;
    if (contains(msg, len, "busy"))
        return FB_BUSY;
    return FB_OK;
}

static uint8_t scenario_app(void *ctx, uint32_t mid, const uint8_t *msg, size_t len)
{
    struct capture *cp = ctx;
    (void)msg;
    cp->calls++;
    cp->last_mid = mid;
    cp->last_len = len;
    return cp->result;
}

static struct fb_link link;
static struct capture cap;

/* ---- vector records ------------------------------------------------------------------------ */

static void vec_crc16(void)
{
    size_t n = field_hex(a, sizeof a);
    CHECK(fb_crc16(a, n) == field_ulong(16), "crc16");
}

static void vec_cobs(void)
{
    size_t n = field_hex(a, sizeof a), m = field_hex(b, sizeof b), e;
    long d;
    e = fb_cobs_encode(a, n, c, sizeof c);
    CHECK(e == m && memcmp(c, b, m) == 0, "cobs encode");
    d = fb_cobs_decode(b, m, c, sizeof c);
    CHECK(d == (long)n && memcmp(c, a, n) == 0, "cobs decode");
    d = fb_cobs_decode(b, m, b, m);
    CHECK(d == (long)n && memcmp(b, a, n) == 0, "cobs decode in place");
}

static void vec_frame(void)
{
    unsigned type = (unsigned)field_ulong(10), seq = (unsigned)field_ulong(10);
    size_t n = field_hex(a, sizeof a), m = field_hex(b, sizeof b), e;
    struct fb_frame fr;
    e = fb_frame_encode((uint8_t)type, (uint8_t)seq, a, n, c, sizeof c);
    CHECK(e == m && memcmp(c, b, m) == 0, "frame encodes to the wire bytes");
    if (n <= FB_TX_PAYLOAD_MAX) { /* in place, as the link encodes its own frames */
        memcpy(c + FB_FRAME_INPLACE_OFFSET, a, n);
        e = fb_frame_encode((uint8_t)type, (uint8_t)seq, c + FB_FRAME_INPLACE_OFFSET, n, c,
                            FB_TX_WIRE_MAX);
        CHECK(e == m && memcmp(c, b, m) == 0, "frame encodes in place");
    }
    CHECK(m > 0 && fb_frame_decode(b, m - 1, &fr) == FB_FRAME_OK, "frame decodes");
    CHECK(fr.type == type && fr.seq == seq && fr.payload_len == n &&
              memcmp(fr.payload, a, n) == 0, "decoded fields");
}

static void vec_bad(void)
{
    char reason[12];
    size_t m, end = 0;
    struct fb_frame fr;
    int want;
    /* the wire field ends with its delimiter: decode what is before it */
    field_word(reason, sizeof reason);
    m = field_hex(b, sizeof b);
    want = strcmp_P(reason, FSTR("crc")) == 0       ? FB_FRAME_CRC
           : strcmp_P(reason, FSTR("version")) == 0 ? FB_FRAME_VERSION
           : strcmp_P(reason, FSTR("short")) == 0   ? FB_FRAME_SHORT
           : strcmp_P(reason, FSTR("cobs")) == 0    ? FB_FRAME_COBS
                                                   : FB_FRAME_OVERSIZE;
    while (end < m && b[end] != 0)
        end++;
    CHECK(fb_frame_decode(b, end, &fr) == want, "bad frame rejected for its reason");
}

/* Compare a string field of a vector with bytes read from msgpack. A field holding U+FFFD is
 * the host's rendering of invalid UTF-8: only the part before it is compared. */
static int text_matches(const char *field, const char *s, uint32_t len)
{
    const char *repl = strstr(field, "\xef\xbf\xbd");
    size_t n = repl ? (size_t)(repl - field) : strlen(field);
    return repl ? len > n && memcmp(s, field, n) == 0 : len == n && memcmp(s, field, n) == 0;
}

static void vec_hello_ack(void)
{
    size_t n = field_hex(a, sizeof a);
    unsigned long v = field_ulong(10), mp = field_ulong(10), mm = field_ulong(10);
    char fw[40], id[40];
    struct fb_mp_reader r;
    uint32_t count, i, klen, slen;
    const char *k, *s;
    uint64_t num;
    int seen = 0;
    field_word(fw, sizeof fw);
    field_word(id, sizeof id);
    fb_mp_reader_init(&r, a, n);
    CHECK(fb_mp_read_map(&r, &count) == 0 && count == 5, "hello map of 5");
    for (i = 0; i < count && !r.failed; i++) {
        CHECK(fb_mp_read_str(&r, &k, &klen) == 0, "hello key");
        if (klen == 2 && (memcmp(k, "fw", 2) == 0 || memcmp(k, "id", 2) == 0)) {
            int is_fw = k[0] == 'f';
            CHECK(fb_mp_read_str(&r, &s, &slen) == 0 && slen <= FB_INFO_STR_MAX, "string");
            CHECK(text_matches(is_fw ? fw : id, s, slen), "fw / id as the vector says");
            seen++;
        } else {
            CHECK(fb_mp_read_uint(&r, &num) == 0, "uint value");
            if (klen == 1 && k[0] == 'v')
                CHECK(num == v, "v");
            if (klen == 2 && memcmp(k, "mp", 2) == 0)
                CHECK(num == mp, "mp");
            if (klen == 2 && memcmp(k, "mm", 2) == 0)
                CHECK(num == mm, "mm");
        }
    }
    CHECK(seen == 2 && r.p == r.end, "hello strings read, nothing left");
}

static void check_truncations(size_t n)
{
    struct fb_envelope env;
    size_t cut;
    for (cut = 0; cut < n; cut++) /* every truncation is refused, never overrun */
        if (fb_envelope_parse(a, cut, &env) != -1)
            break;
    CHECK(cut == n, "every truncation of the envelope is refused");
}

/* avr-libc has no strtoull */
static uint64_t decimal(const char *s)
{
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10u + (uint64_t)(*s++ - '0');
    return v;
}

static int same_text(const char *s, uint32_t len, const char *want)
{
    return len == strlen(want) && (len == 0 || memcmp(s, want, len) == 0);
}

/* envelope MSGPACK ID ROUTE RCV EXP BODY, envelope_variant NAME MSGPACK ID ROUTE RCV EXP BODY
 * (the NAME is read by vector_record) */
static void vec_envelope(void)
{
    size_t n = field_hex(a, sizeof a);
    char id[40], route[40], num[24];
    struct fb_envelope env;
    int ok;
    field_word(id, sizeof id);
    field_word(route, sizeof route);
    if (strcmp(id, "-") == 0)
        id[0] = '\0';
    if (strcmp(route, "-") == 0)
        route[0] = '\0';
    ok = fb_envelope_parse(a, n, &env) == 0;
    CHECK(ok, "envelope parses");
    CHECK(ok && same_text(env.id, env.id_len, id), "id");
    CHECK(ok && same_text(env.route, env.route_len, route), "route");
    field_word(num, sizeof num);
    CHECK(ok && env.rcv == decimal(num), "rcv");
    field_word(num, sizeof num);
    CHECK(ok && env.exp == decimal(num), "exp"); /* '-' (nil) reads as 0 */
    CHECK(field_hex_equals(ok ? env.body : a, ok ? env.body_len : 0), "body");
    check_truncations(n);
}

/* envelope_bad NAME MSGPACK: must be refused */
static void vec_envelope_bad(void)
{
    struct fb_envelope env;
    size_t n = field_hex(a, sizeof a);
    int rc = fb_envelope_parse(a, n, &env);
    CHECK(rc == -1, "malformed envelope refused");
    if (rc == 0) /* what an application trusting the lengths would read: the 16-bit bug */
        printf_P(FSTR("  parsed id_len %lu body_len %lu of %u bytes\n"),
                 (unsigned long)env.id_len, (unsigned long)env.body_len, (unsigned)n);
}

/* ---- transcripts: host bytes in, device bytes out -------------------------------------------- */

static char tr_fw[32], tr_id[32];
static int tr_active;

static void transcript_end(void)
{
    if (tr_active)
        CHECK(cap.len == 0 && !cap.overflow, "no device output beyond the transcript");
    tr_active = 0;
}

/* transcript NAME [mp=N] [mm=N] [fw=TEXT] [id=TEXT]: a new device, booted */
static void vec_transcript(void)
{
    struct fb_link_config cfg;
    char opt[48];
    transcript_end();
    memset(&cfg, 0, sizeof cfg);
    cfg.max_payload = FB_MAX_PAYLOAD;
    cfg.msg_buf = a;
    cfg.msg_cap = 0;
    strcpy(tr_fw, "fw");
    strcpy(tr_id, "dev");
    while (have_field()) {
        field_word(opt, sizeof opt);
        if (strncmp(opt, "mp=", 3) == 0)
            cfg.max_payload = (uint8_t)atoi(opt + 3);
        else if (strncmp(opt, "mm=", 3) == 0)
            cfg.msg_cap = (size_t)atol(opt + 3);
        else if (strncmp(opt, "fw=", 3) == 0)
            strcpy(tr_fw, opt + 3);
        else if (strncmp(opt, "id=", 3) == 0)
            strcpy(tr_id, opt + 3);
        else
            CHECK(0, "known transcript option");
    }
    CHECK(cfg.msg_cap <= sizeof a, "reassembly buffer fits the test's");
    cfg.rx_buf = b;
    cfg.rx_cap = FB_RX_BUF_FOR(cfg.max_payload); /* the least the device needs, as fbsim */
    cfg.firmware = tr_fw;
    cfg.device_id = tr_id;
    cfg.on_message = vector_app;
    cfg.write = cap_write;
    memset(&cap, 0, sizeof cap);
    cap.out = c;
    cap.cap = sizeof c;
    cfg.ctx = &cap;
    CHECK(fb_link_init(&link, &cfg) == 0, "transcript device configures");
    fb_link_boot(&link);
    tr_active = 1;
}

/* host HEX: fed a byte at a time (the device must cope with any split) */
static void vec_host(void)
{
    int v;
    CHECK(tr_active, "host line inside a transcript");
    field_start();
    while ((v = hex_next()) >= 0) {
        uint8_t byte = (uint8_t)v;
        if (tr_active)
            fb_link_feed(&link, &byte, 1);
    }
}

/* device HEX: exactly what the device wrote since the last line */
static void vec_device(void)
{
    CHECK(tr_active, "device line inside a transcript");
    CHECK(!cap.overflow && field_hex_equals(cap.out, cap.len), "device wrote these bytes");
    cap.len = 0;
    cap.overflow = 0;
}

/* Every record kind: its handler, and whether a NAME field follows the kind. In flash on AVR. */
struct kind {
    char name[18];
    uint8_t named;
    void (*run)(void);
};

#ifdef __AVR__
#define TABLE PROGMEM
#define table_byte(p) pgm_read_byte(p)
#define table_fn(p) ((void (*)(void))pgm_read_word(p))
#else
#define TABLE
#define table_byte(p) (*(p))
#define table_fn(p) (*(p))
#endif

static const struct kind kinds[] TABLE = {
    {"crc16", 0, vec_crc16},
    {"cobs", 0, vec_cobs},
    {"frame", 1, vec_frame},
    {"bad", 1, vec_bad},
    {"hello_ack", 0, vec_hello_ack},
    {"envelope", 0, vec_envelope},
    {"envelope_variant", 1, vec_envelope},
    {"envelope_bad", 1, vec_envelope_bad},
    {"transcript", 1, vec_transcript},
    {"host", 0, vec_host},
    {"device", 0, vec_device},
};

static void vector_record(void)
{
    char kind[20];
    const struct kind *k;
    int first = field_start();
    if (first == '#' || first == '\n' || first == -1) {
        skip_line();
        return;
    }
    field_word(kind, sizeof kind);
    vectors++;
    for (k = kinds; k < kinds + sizeof kinds / sizeof kinds[0]; k++)
        if (strcmp_P(kind, k->name) == 0)
            break;
    if (k == kinds + sizeof kinds / sizeof kinds[0]) {
        CHECK(0, "known vector kind");
    } else {
        if (table_fn(&k->run) != vec_host && table_fn(&k->run) != vec_device)
            strcpy(where, kind); /* host and device lines report their transcript's name */
        if (table_byte(&k->named)) {
            size_t n = strlen(where);
            where[n] = ' '; /* named records: "frame data_single" */
            field_word(where + n + 1, sizeof where - n - 1);
        }
        table_fn(&k->run)();
    }
    CHECK(!have_field(), "no fields left over");
    skip_line();
}

static void run_vectors(void)
{
    int ch;
    while ((ch = field_start()) != -1) {
        (void)ch;
        vector_record();
    }
    transcript_end();
    pushed = -2;
}

/* ---- link scenarios: what the transcripts cannot see ---------------------------------------- */

/* The last frame the device wrote (decoded in place in the capture buffer). */
static int last_answer(struct fb_frame *fr)
{
    size_t end = cap.len, start;
    if (end < 2)
        return -1;
    start = end - 1;
    while (start > 0 && cap.out[start - 1] != 0)
        start--;
    return fb_frame_decode(cap.out + start, end - 1 - start, fr);
}

static void feed_frame(uint8_t type, uint8_t seq, const uint8_t *p, size_t n)
{
    uint8_t wire[64];
    size_t m = fb_frame_encode(type, seq, p, n, wire, sizeof wire);
    cap.len = 0;
    fb_link_feed(&link, wire, m);
}

static const uint8_t host_hello[] = {0x82, 0xa1, 'v', 0x01, 0xa2, 'm', 'p', 0xcc, 0xfa};

static void link_scenarios(void)
{
    struct fb_link_config cfg;
    struct fb_frame fr;
    uint8_t p[20] = {0, 0, 0, 7, 'h', 'i'}, wire[64];
    size_t m, i;
    uint32_t big;

    strcpy(where, "scenarios");
    memset(&cfg, 0, sizeof cfg);
    memset(&cap, 0, sizeof cap);
    cap.out = c;
    cap.cap = sizeof c;
    cfg.rx_buf = b;
    cfg.rx_cap = FB_RX_BUF_SIZE;
    cfg.msg_buf = a;
    cfg.msg_cap = 40;
    cfg.max_payload = 16;
    cfg.firmware = "1.0.0";
    cfg.device_id = "test";
    cfg.on_message = scenario_app;
    cfg.write = cap_write;
    cfg.ctx = &cap;
    CHECK(fb_link_init(&link, &cfg) == 0, "init");
    fb_link_boot(&link);
    feed_frame(FB_HELLO, 0, host_hello, sizeof host_hello);
    CHECK(last_answer(&fr) == 0 && fr.type == FB_HELLO_ACK, "HELLO_ACK");

    /* a retransmitted fragment is not appended twice: 12 + 12 + 6 bytes into 40 */
    p[3] = 8;
    memset(p + 4, 'x', 12);
    feed_frame(FB_DATA_MORE, 1, p, 16);
    feed_frame(FB_DATA_MORE, 1, p, 16);
    feed_frame(FB_DATA_MORE, 2, p, 16);
    feed_frame(FB_DATA, 3, p, 10);
    CHECK(cap.calls == 1 && cap.last_mid == 8 && cap.last_len == 30, "reassembled 30 bytes once");

    /* BUSY is not remembered: the retry (a new seq) reaches the application again */
    p[3] = 11;
    cap.result = FB_BUSY;
    feed_frame(FB_DATA, 10, p, 6);
    cap.result = FB_OK;
    feed_frame(FB_DATA, 11, p, 6);
    CHECK(cap.calls == 3 && last_answer(&fr) == 0 && fr.type == FB_ACK,
          "BUSY message processed again on retry");

    /* a frame split into single bytes, after garbage and an oversized run */
    memset(wire, 0x55, sizeof wire);
    for (i = 0; i < 5; i++)
        fb_link_feed(&link, wire, sizeof wire); /* 320 bytes with no delimiter */
    wire[0] = 0;
    fb_link_feed(&link, wire, 1);
    p[3] = 13;
    m = fb_frame_encode(FB_DATA, 13, p, 6, wire, sizeof wire);
    for (i = 0; i < m; i++)
        fb_link_feed(&link, wire + i, 1);
    CHECK(cap.calls == 4, "resync after an oversized run");
#if FB_STATS
    CHECK(link.stats.rx_oversize == 1 && link.stats.messages == 3, "counted");
#endif

    /* remembered ids survive a re-init through fb_link_remember */
    CHECK(fb_link_init(&link, &cfg) == 0, "re-init");
    fb_link_remember(&link, 13, FB_OK);
    feed_frame(FB_HELLO, 0, host_hello, sizeof host_hello);
    feed_frame(FB_DATA, 0, p, 6);
    CHECK(cap.calls == 4 && last_answer(&fr) == 0 && fr.type == FB_ACK,
          "id restored from non-volatile memory is deduped after reboot");

    /* FB_DEDUPE_SLOTS newer ids push an old one out of the ring */
    for (big = 100; big < 100 + FB_DEDUPE_SLOTS; big++)
        fb_link_remember(&link, big, FB_OK);
    p[3] = 13;
    feed_frame(FB_DATA, 1, p, 6);
    CHECK(cap.calls == 5, "an id older than FB_DEDUPE_SLOTS answers is processed again");

    /* no reassembly buffer: a fragment is TOO_BIG, HELLO announces mm = mp - 4 */
    cfg.msg_buf = NULL;
    cfg.msg_cap = 0;
    CHECK(fb_link_init(&link, &cfg) == 0, "init without a reassembly buffer");
    feed_frame(FB_HELLO, 0, host_hello, sizeof host_hello);
    p[3] = 20;
    feed_frame(FB_DATA_MORE, 0, p, 16);
    CHECK(last_answer(&fr) == 0 && fr.type == FB_REFUSE && fr.payload[0] == FB_TOO_BIG,
          "fragment without a reassembly buffer refused TOO_BIG");

    /* configuration checks */
    cfg.msg_buf = a;
    cfg.msg_cap = 40;
    cfg.rx_cap = FB_RX_BUF_FOR(16) - 1;
    CHECK(fb_link_init(&link, &cfg) == -1, "rx buffer too small for max_payload refused");
    cfg.rx_cap = FB_RX_BUF_FOR(16);
    CHECK(fb_link_init(&link, &cfg) == 0, "FB_RX_BUF_FOR(max_payload) is enough");
    cfg.max_payload = 4;
    CHECK(fb_link_init(&link, &cfg) == -1, "max_payload below 5 refused");
    cfg.max_payload = 16;
    cfg.msg_buf = NULL;
    CHECK(fb_link_init(&link, &cfg) == -1, "msg_cap without msg_buf refused");
}

/* msgpack reader edge cases that the envelope vectors do not reach. */
static void msgpack_scenarios(void)
{
    static const uint8_t deep_ok[] = {0x91, 0x91, 0x91, 0x91, 0x01};
    static const uint8_t deep_bad[] = {0x91, 0x91, 0x91, 0x91, 0x90};
    static const uint8_t u64[] = {0xcf, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08};
    static const uint8_t str32[] = {0xdb, 0x00, 0x01, 0x00, 0x01, 'x'};
    struct fb_mp_reader r;
    struct fb_mp_writer w;
    const char *s;
    uint32_t len;
    uint64_t v;
    strcpy(where, "msgpack");
    fb_mp_reader_init(&r, deep_ok, sizeof deep_ok);
    CHECK(fb_mp_skip(&r) == 0 && r.p == r.end, "4 nested arrays are skipped");
    fb_mp_reader_init(&r, deep_bad, sizeof deep_bad);
    CHECK(fb_mp_skip(&r) == -1, "a 5th nested array is refused");
    fb_mp_reader_init(&r, u64, sizeof u64);
    CHECK(fb_mp_read_uint(&r, &v) == 0 && v == 0x0102030405060708ull, "uint64");
    fb_mp_reader_init(&r, str32, sizeof str32);
    CHECK(fb_mp_read_str(&r, &s, &len) == -1 && r.failed, "str32 of 65537 with 1 byte refused");
    CHECK(fb_mp_read_nil(&r) == -1, "a failed reader stays failed");
    fb_mp_writer_init(&w, c, 4);
    fb_mp_write_str(&w, "hello", 5);
    CHECK(fb_mp_writer_len(&w, c) == 0, "writer overflow reported");
    fb_mp_writer_init(&w, c, sizeof c);
    fb_mp_write_uint(&w, 0x10000u);
    fb_mp_write_map(&w, 16);
    CHECK(fb_mp_writer_len(&w, c) == 8 && c[0] == 0xce && c[5] == 0xde, "uint32 and map16");
}

#ifdef __AVR__
/* Results go to USART0, which simavr prints. */
static int uart_putc(char ch, FILE *f)
{
    (void)f;
    while (!(UCSR0A & (1u << UDRE0))) {
    }
    UDR0 = (uint8_t)ch;
    return 0;
}
static FILE uart_out = FDEV_SETUP_STREAM(uart_putc, NULL, _FDEV_SETUP_WRITE);

extern const char vectors_link[] PROGMEM, vectors_transcripts[] PROGMEM;
extern const unsigned vectors_link_len, vectors_transcripts_len;
extern uint8_t __heap_start;
#define STACK_PAINT 0xA5u

/* Paint the free RAM between the static data and the stack, so that the untouched bytes left at
 * the end show how close the stack came: the test reports its RAM, not just its answers. */
static void paint_stack(void)
{
    uint8_t *p = &__heap_start, *sp = (uint8_t *)SP;
    while (p < sp - 16)
        *p++ = STACK_PAINT;
}

static unsigned untouched_ram(void)
{
    uint8_t *p = &__heap_start;
    unsigned n = 0;
    while (*p++ == STACK_PAINT)
        n++;
    return n;
}

int main(void)
{
    paint_stack();
    UCSR0B = (uint8_t)(1u << TXEN0);
    stdout = &uart_out;
    src_at = vectors_link;
    src_end = vectors_link + vectors_link_len;
    run_vectors();
    src_at = vectors_transcripts;
    src_end = vectors_transcripts + vectors_transcripts_len;
    run_vectors();
    CHECK(vectors >= 60, "read the vectors");
    link_scenarios();
    msgpack_scenarios();
    printf_P(PSTR("test_fb (atmega328p): %lu checks, %lu failures (%lu vectors); RAM: %u bytes "
                  "static, %u never touched of %u\n"),
             checks, failures, vectors, (unsigned)(&__heap_start - (uint8_t *)RAMSTART),
             untouched_ram(), (unsigned)(RAMEND + 1 - RAMSTART));
    cli();
    sleep_cpu(); /* simavr ends the run: sleeping with interrupts off */
    return 0;
}
#else
static unsigned long packed_bytes;

static void emit(int byte)
{
    printf("%s0x%02x", packed_bytes % 16 ? "," : ",\n    ", byte & 0xFF);
    packed_bytes++;
}

static void emit_text(const char *t)
{
    while (*t)
        emit(*t++);
}

/* test_fb --pack NAME FILE: C source of the vector file as the AVR build puts it in flash, the
 * array NAME[] (comments and blank lines dropped, long hex tokens packed to bytes). */
static int pack(const char *name, const char *path)
{
    char line[8192], *tok;
    FILE *fp = fopen(path, "r");
    if (!fp) {
        perror(path);
        return 2;
    }
    printf("/* %s packed by test_fb --pack */\n#include <avr/pgmspace.h>\n", path);
    printf("const char %s[] PROGMEM = {\n    0x%02x", name, '\n'); /* an empty first line */
    packed_bytes = 1;
    while (fgets(line, sizeof line, fp)) {
        int first = 1;
        if (line[0] == '#' || line[0] == '\n')
            continue;
        for (tok = strtok(line, " \n"); tok; tok = strtok(NULL, " \n"), first = 0) {
            size_t n = strlen(tok), i;
            int hex = n >= PACK_MIN_CHARS && n % 2 == 0 && n / 2 <= 0xFFFFu;
            for (i = 0; hex && i < n; i++)
                hex = (tok[i] >= '0' && tok[i] <= '9') || (tok[i] >= 'a' && tok[i] <= 'f');
            if (!first)
                emit(' ');
            if (!hex) {
                emit_text(tok);
                continue;
            }
            emit(PACKED);
            emit((int)(n / 2 >> 8));
            emit((int)(n / 2 & 0xFF));
            for (i = 0; i < n; i += 2)
                emit(hexval(tok[i]) << 4 | hexval(tok[i + 1]));
        }
        emit('\n');
    }
    fclose(fp);
    printf("};\nconst unsigned %s_len = %lu;\n", name, packed_bytes);
    return 0;
}

int main(int argc, char **argv)
{
    int i;
    if (argc == 4 && strcmp(argv[1], "--pack") == 0)
        return pack(argv[2], argv[3]);
    if (argc < 2) {
        fprintf(stderr, "usage: test_fb VECTOR_FILE...\n");
        return 2;
    }
    for (i = 1; i < argc; i++) {
        src_fp = fopen(argv[i], "r");
        if (!src_fp) {
            perror(argv[i]);
            return 2;
        }
        run_vectors();
        fclose(src_fp);
    }
    CHECK(vectors >= 60, "read the vectors");
    link_scenarios();
    msgpack_scenarios();
    printf("test_fb: %lu checks, %lu failures (%lu vectors)\n", checks, failures, vectors);
    return failures ? 1 : 0;
}
#endif
