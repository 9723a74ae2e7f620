/* Minimal msgpack: the subset the HELLO maps and the gateway's envelope use, bounds-checked. */
#include "fieldgate_bridge.h"
#include "fb_platform.h"

#include <string.h>

void fb_mp_reader_init(struct fb_mp_reader *r, const uint8_t *data, size_t len)
{
    r->p = data;
    r->end = data + len;
    r->failed = 0;
}

static int fail(struct fb_mp_reader *r)
{
    r->failed = 1;
    return -1;
}

/* n is a msgpack length (up to 32 bits). It must not pass through size_t, which has 16 bits on
 * AVR: a str32 claiming 0x00010001 bytes would be checked as 1. Comparing size_t with uint32_t
 * converts both to the wider type, so the comparison is exact on every target. */
static int need(const struct fb_mp_reader *r, uint32_t n)
{
    return !r->failed && (size_t)(r->end - r->p) >= n;
}

static uint32_t be(const uint8_t *p, unsigned n)
{
    uint32_t v = 0;
    unsigned i;
    for (i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads a length prefix: fix (mask applied to the tag) or 1/2/4-byte big-endian. */
static int read_len(struct fb_mp_reader *r, unsigned width, uint32_t *len)
{
    if (!need(r, width))
        return fail(r);
    *len = be(r->p, width);
    r->p += width;
    return 0;
}

int fb_mp_read_map(struct fb_mp_reader *r, uint32_t *count)
{
    uint8_t t;
    if (!need(r, 1))
        return fail(r);
    t = *r->p++;
    if ((t & 0xF0u) == 0x80u) {
        *count = t & 0x0Fu;
        return 0;
    }
    if (t == 0xDE)
        return read_len(r, 2, count);
    if (t == 0xDF)
        return read_len(r, 4, count);
    return fail(r);
}

static int read_bytes(struct fb_mp_reader *r, const uint8_t **b, uint32_t len)
{
    if (!need(r, len))
        return fail(r);
    *b = r->p;
    r->p += len;
    return 0;
}

int fb_mp_read_str(struct fb_mp_reader *r, const char **s, uint32_t *len)
{
    uint8_t t;
    const uint8_t *b;
    if (!need(r, 1))
        return fail(r);
    t = *r->p++;
    if ((t & 0xE0u) == 0xA0u)
        *len = t & 0x1Fu;
    else if (t == 0xD9 || t == 0xDA || t == 0xDB) {
        if (read_len(r, 1u << (t - 0xD9), len) < 0)
            return -1;
    } else
        return fail(r);
    if (read_bytes(r, &b, *len) < 0)
        return -1;
    *s = (const char *)b;
    return 0;
}

int fb_mp_read_bin(struct fb_mp_reader *r, const uint8_t **b, uint32_t *len)
{
    uint8_t t;
    if (!need(r, 1))
        return fail(r);
    t = *r->p++;
    if (t < 0xC4 || t > 0xC6)
        return fail(r);
    if (read_len(r, 1u << (t - 0xC4), len) < 0)
        return -1;
    return read_bytes(r, b, *len);
}

int fb_mp_read_uint(struct fb_mp_reader *r, uint64_t *v)
{
    uint8_t t;
    if (!need(r, 1))
        return fail(r);
    t = *r->p++;
    if (t <= 0x7F) {
        *v = t;
        return 0;
    }
    if ((t >= 0xCC && t <= 0xCF) || (t >= 0xD0 && t <= 0xD3)) {
        /* uint 8..64, or int 8..64 holding a non-negative value (some encoders use those) */
        unsigned width = 1u << (((unsigned)t - 0xCCu) & 3u);
        if (!need(r, width) || (t >= 0xD0 && (r->p[0] & 0x80u)))
            return fail(r);
        if (width == 8)
            *v = ((uint64_t)be(r->p, 4) << 32) | be(r->p + 4, 4);
        else
            *v = be(r->p, width);
        r->p += width;
        return 0;
    }
    return fail(r);
}

int fb_mp_read_nil(struct fb_mp_reader *r)
{
    if (!need(r, 1) || *r->p != 0xC0)
        return -1; /* not nil: not a failure, the caller tries another type */
    r->p++;
    return 0;
}

static int skip_n(struct fb_mp_reader *r, uint32_t n)
{
    if (!need(r, n))
        return fail(r);
    r->p += n; /* n <= the bytes left, so it fits a size_t */
    return 0;
}

static int skip(struct fb_mp_reader *r, unsigned depth);

/* Skip the n items of an array (per 1) or map (per 2) found at depth. */
static int skip_items(struct fb_mp_reader *r, uint32_t n, uint32_t per, unsigned depth)
{
    uint32_t i;
    if (depth >= FB_MP_MAX_DEPTH)
        return fail(r); /* a container nested deeper than the bound (the stack is the limit) */
    /* each item takes at least one byte: refuse counts the input cannot hold */
    if (n > (size_t)(r->end - r->p) / per)
        return fail(r);
    for (i = 0; i < n * per; i++)
        if (skip(r, depth + 1u) < 0)
            return -1;
    return 0;
}

static int skip(struct fb_mp_reader *r, unsigned depth)
{
    uint8_t t;
    uint32_t n = 0;
    if (!need(r, 1))
        return fail(r);
    t = *r->p++;
    if (t <= 0x7F || t >= 0xE0 || t == 0xC0 || t == 0xC2 || t == 0xC3)
        return 0;
    if ((t & 0xE0u) == 0xA0u)
        return skip_n(r, t & 0x1Fu);
    if ((t & 0xF0u) == 0x80u)
        return skip_items(r, t & 0x0Fu, 2, depth);
    if ((t & 0xF0u) == 0x90u)
        return skip_items(r, t & 0x0Fu, 1, depth);
    switch (t) {
    case 0xC4: case 0xC5: case 0xC6: /* bin 8/16/32 */
        if (read_len(r, 1u << (t - 0xC4), &n) < 0)
            return -1;
        return skip_n(r, n);
    case 0xD9: case 0xDA: case 0xDB: /* str 8/16/32 */
        if (read_len(r, 1u << (t - 0xD9), &n) < 0)
            return -1;
        return skip_n(r, n);
    case 0xCC: case 0xD0: return skip_n(r, 1);
    case 0xCD: case 0xD1: return skip_n(r, 2);
    case 0xCE: case 0xD2: case 0xCA: return skip_n(r, 4);
    case 0xCF: case 0xD3: case 0xCB: return skip_n(r, 8);
    case 0xD4: return skip_n(r, 2); /* fixext: type + data */
    case 0xD5: return skip_n(r, 3);
    case 0xD6: return skip_n(r, 5);
    case 0xD7: return skip_n(r, 9);
    case 0xD8: return skip_n(r, 17);
    case 0xC7: case 0xC8: case 0xC9: /* ext 8/16/32 */
        if (read_len(r, 1u << (t - 0xC7), &n) < 0)
            return -1;
        if (n == 0xFFFFFFFFu)
            return fail(r);
        return skip_n(r, n + 1u);
    case 0xDC: case 0xDD: case 0xDE: case 0xDF: /* array/map 16/32 */
        if (read_len(r, (t == 0xDC || t == 0xDE) ? 2u : 4u, &n) < 0)
            return -1;
        return skip_items(r, n, (t == 0xDE || t == 0xDF) ? 2u : 1u, depth);
    default:
        return fail(r); /* 0xC1 is never used */
    }
}

int fb_mp_skip(struct fb_mp_reader *r)
{
    return skip(r, 0);
}

void fb_mp_writer_init(struct fb_mp_writer *w, uint8_t *buf, size_t cap)
{
    w->p = buf;
    w->end = buf + cap;
    w->failed = 0;
}

static void put(struct fb_mp_writer *w, const uint8_t *b, size_t n)
{
    if (w->failed || (size_t)(w->end - w->p) < n) {
        w->failed = 1;
        return;
    }
    memcpy(w->p, b, n);
    w->p += n;
}

void fb_mp_write_flash(struct fb_mp_writer *w, const uint8_t *flash, uint8_t n)
{
    uint8_t i;
    if (w->failed || (size_t)(w->end - w->p) < n) {
        w->failed = 1;
        return;
    }
    for (i = 0; i < n; i++)
        *w->p++ = fb_flash_byte(flash + i);
}

static void put_tag_be(struct fb_mp_writer *w, uint8_t tag, uint32_t v, unsigned width)
{
    uint8_t b[5];
    unsigned i;
    b[0] = tag;
    for (i = 0; i < width; i++)
        b[1 + i] = (uint8_t)(v >> (8u * (width - 1u - i)));
    put(w, b, 1u + width);
}

void fb_mp_write_map(struct fb_mp_writer *w, uint32_t count)
{
    if (count < 16)
        put_tag_be(w, (uint8_t)(0x80u | count), 0, 0);
    else if (count <= 0xFFFFu)
        put_tag_be(w, 0xDE, count, 2);
    else
        put_tag_be(w, 0xDF, count, 4);
}

void fb_mp_write_str(struct fb_mp_writer *w, const char *s, size_t len)
{
    if (len < 32)
        put_tag_be(w, (uint8_t)(0xA0u | len), 0, 0);
    else if (len <= 0xFFu)
        put_tag_be(w, 0xD9, (uint32_t)len, 1);
    else if (len <= 0xFFFFu)
        put_tag_be(w, 0xDA, (uint32_t)len, 2);
    else {
        w->failed = 1; /* nothing this small needs longer strings */
        return;
    }
    put(w, (const uint8_t *)s, len);
}

void fb_mp_write_uint(struct fb_mp_writer *w, uint32_t v)
{
    if (v <= 0x7F)
        put_tag_be(w, (uint8_t)v, 0, 0);
    else if (v <= 0xFF)
        put_tag_be(w, 0xCC, v, 1);
    else if (v <= 0xFFFF)
        put_tag_be(w, 0xCD, v, 2);
    else
        put_tag_be(w, 0xCE, v, 4);
}

size_t fb_mp_writer_len(const struct fb_mp_writer *w, const uint8_t *buf)
{
    return w->failed ? 0 : (size_t)(w->p - buf);
}

/* The envelope's keys, in flash, each after its length: the index of a match is its key. */
enum { KEY_ID, KEY_ROUTE, KEY_RCV, KEY_EXP, KEY_BODY, KEY_UNKNOWN };
static const uint8_t env_keys[] FB_FLASH = {
    2, 'i', 'd', 5, 'r', 'o', 'u', 't', 'e', 3, 'r', 'c', 'v', 3, 'e', 'x', 'p', 4, 'b', 'o', 'd', 'y', 0};

static int key_index(const char *k, uint32_t len)
{
    const uint8_t *p = env_keys;
    int index = 0;
    uint8_t n;
    while ((n = fb_flash_byte(p)) != 0) {
        if (len == n) {
            uint8_t i = 0;
            while (i < n && (uint8_t)k[i] == fb_flash_byte(p + 1 + i))
                i++;
            if (i == n)
                return index;
        }
        p += 1u + n;
        index++;
    }
    return KEY_UNKNOWN;
}

int fb_envelope_parse(const uint8_t *data, size_t len, struct fb_envelope *env)
{
    struct fb_mp_reader r;
    uint32_t count, i;
    int seen = 0;
    memset(env, 0, sizeof *env);
    fb_mp_reader_init(&r, data, len);
    if (fb_mp_read_map(&r, &count) < 0)
        return -1;
    for (i = 0; i < count; i++) {
        const char *k;
        uint32_t klen;
        if (fb_mp_read_str(&r, &k, &klen) < 0)
            return -1;
        switch (key_index(k, klen)) {
        case KEY_ID:
            if (fb_mp_read_str(&r, &env->id, &env->id_len) < 0)
                return -1;
            seen |= 1;
            break;
        case KEY_ROUTE:
            if (fb_mp_read_str(&r, &env->route, &env->route_len) < 0)
                return -1;
            break;
        case KEY_RCV:
            if (fb_mp_read_uint(&r, &env->rcv) < 0)
                return -1;
            break;
        case KEY_EXP:
            if (fb_mp_read_nil(&r) < 0 && fb_mp_read_uint(&r, &env->exp) < 0)
                return -1;
            break;
        case KEY_BODY:
            if (fb_mp_read_bin(&r, &env->body, &env->body_len) < 0)
                return -1;
            seen |= 2;
            break;
        default:
            if (fb_mp_skip(&r) < 0)
                return -1;
        }
    }
    /* the message is the map and nothing else: trailing bytes mean a framing or encoder bug */
    return seen == 3 && r.p == r.end ? 0 : -1;
}
