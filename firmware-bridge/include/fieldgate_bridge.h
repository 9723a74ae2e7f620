/*
 * fieldgate firmware-bridge: the microcontroller end of the fieldgate serial link.
 *
 * Portable C99, no heap, no dependencies. The integrator owns every buffer (sized with the
 * constants below), feeds received bytes with fb_link_feed() and gets one callback per complete
 * message. The byte-level protocol is PROTOCOL.md beside this directory.
 */
#ifndef FIELDGATE_BRIDGE_H
#define FIELDGATE_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FB_PROTOCOL_VERSION 1u
/* A body (hdr, seq, payload, CRC-16) is at most 254 bytes, so COBS adds exactly one byte and a
 * frame is at most 256 bytes on the wire with its delimiter. */
#define FB_MAX_BODY 254u
#define FB_MAX_WIRE (FB_MAX_BODY + 2u)
#define FB_MIN_BODY 4u
#define FB_MAX_PAYLOAD (FB_MAX_BODY - FB_MIN_BODY) /* 250 */
#define FB_MID_BYTES 4u
/* The receive buffer must hold one encoded frame (delimiter excluded): at most 255 bytes, or
 * less if the device announces a smaller max payload (then rx_cap >= max_payload + 5). */
#define FB_RX_BUF_SIZE (FB_MAX_WIRE - 1u)
/* Processed message ids remembered for duplicate suppression: the host has one message in flight,
 * so a few cover retransmissions across link resets; 8 also covers a burst of refusals. */
#define FB_DEDUPE_SLOTS 8u
/* Frames the device sends are short (ACK, NAK, REFUSE with code, PONG, HELLO); HELLO is the
 * largest: a map with two strings cut to FB_INFO_STR_MAX bytes. */
#define FB_INFO_STR_MAX 24u
#define FB_TX_BODY_MAX 96u

enum fb_frame_type {
    FB_DATA = 1,
    FB_ACK = 2,
    FB_NAK = 3,
    FB_HELLO = 4,
    FB_HELLO_ACK = 5,
    FB_PING = 6,
    FB_PONG = 7,
    FB_DATA_MORE = 8,
    FB_REFUSE = 9
};

/* Refusal codes: below 0x80 the protocol's, 0x80..0xFF the application's. 0 means processed. */
enum fb_result {
    FB_OK = 0,
    FB_BAD_MESSAGE = 1,
    FB_TOO_BIG = 2,
    FB_BUSY = 3 /* transient: the host retries later */
};

/* ---- codec ---------------------------------------------------------------------------------- */

uint16_t fb_crc16(const uint8_t *data, size_t len); /* CRC-16/CCITT-FALSE */

/* COBS-encode len bytes into out (cap bytes); returns the encoded length or 0 if cap is short. */
size_t fb_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);
/* Decode; in and out may be the same buffer. Returns the decoded length, or -1 on bad input. */
long fb_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);

enum fb_decode_status {
    FB_FRAME_OK = 0,
    FB_FRAME_COBS = -1,
    FB_FRAME_SHORT = -2,
    FB_FRAME_CRC = -3,
    FB_FRAME_VERSION = -4,
    FB_FRAME_OVERSIZE = -5
};

struct fb_frame {
    uint8_t type;
    uint8_t seq;
    const uint8_t *payload; /* points into the caller's buffer */
    size_t payload_len;
};

/* Decode one frame's COBS bytes (between delimiters) in place in buf. */
int fb_frame_decode(uint8_t *buf, size_t len, struct fb_frame *frame);
/* Encode one frame (delimiter included) into out; returns its length or 0 if cap is short. */
size_t fb_frame_encode(uint8_t type, uint8_t seq, const uint8_t *payload, size_t len,
                       uint8_t *out, size_t cap);

/* ---- minimal msgpack ------------------------------------------------------------------------ */

/* A bounds-checked reader: every call returns 0 on success, -1 on truncated or unexpected
 * input (after which the reader stays failed). */
struct fb_mp_reader {
    const uint8_t *p;
    const uint8_t *end;
    int failed;
};

void fb_mp_reader_init(struct fb_mp_reader *r, const uint8_t *data, size_t len);
int fb_mp_read_map(struct fb_mp_reader *r, uint32_t *count);
int fb_mp_read_str(struct fb_mp_reader *r, const char **s, uint32_t *len);
int fb_mp_read_bin(struct fb_mp_reader *r, const uint8_t **b, uint32_t *len);
int fb_mp_read_uint(struct fb_mp_reader *r, uint64_t *v);
int fb_mp_read_nil(struct fb_mp_reader *r); /* 0 and consumed if the next item is nil */
int fb_mp_skip(struct fb_mp_reader *r);     /* skip one item of any type (nesting bounded) */

struct fb_mp_writer {
    uint8_t *p;
    uint8_t *end;
    int failed;
};

void fb_mp_writer_init(struct fb_mp_writer *w, uint8_t *buf, size_t cap);
void fb_mp_write_map(struct fb_mp_writer *w, uint32_t count);
void fb_mp_write_str(struct fb_mp_writer *w, const char *s, size_t len);
void fb_mp_write_uint(struct fb_mp_writer *w, uint64_t v);
/* Bytes written since init into buf, or 0 if anything overflowed. */
size_t fb_mp_writer_len(const struct fb_mp_writer *w, const uint8_t *buf);

/* The gateway's msgpack envelope {"id","route","rcv","exp","body"} (unknown keys skipped). */
struct fb_envelope {
    const char *id;
    uint32_t id_len;
    const char *route;
    uint32_t route_len;
    uint64_t rcv;
    uint64_t exp; /* 0 when the message never expires */
    const uint8_t *body;
    uint32_t body_len;
};

int fb_envelope_parse(const uint8_t *data, size_t len, struct fb_envelope *env);

/* ---- the link ------------------------------------------------------------------------------- */

/* Called once per complete, new message. Return FB_OK when processed, or a refusal code. */
typedef uint8_t (*fb_message_fn)(void *ctx, uint32_t mid, const uint8_t *msg, size_t len);
/* Write bytes to the UART; must take all of them (block or queue). */
typedef void (*fb_write_fn)(void *ctx, const uint8_t *data, size_t len);

struct fb_link_config {
    uint8_t *rx_buf; /* one encoded frame: FB_RX_BUF_SIZE bytes recommended */
    size_t rx_cap;
    uint8_t *msg_buf; /* reassembly of fragmented messages: the largest message you accept */
    size_t msg_cap;
    uint8_t max_payload; /* announced largest frame payload (<= FB_MAX_PAYLOAD, >= 5) */
    const char *firmware; /* announced in HELLO, cut to FB_INFO_STR_MAX */
    const char *device_id;
    fb_message_fn on_message;
    fb_write_fn write;
    void *ctx;
};

struct fb_link_stats {
    uint32_t rx_frames, rx_bad_cobs, rx_bad_short, rx_bad_crc, rx_bad_version, rx_oversize;
    uint32_t messages, duplicates, refusals;
};

struct fb_link {
    struct fb_link_config cfg;
    size_t rx_len;
    int rx_overflow;
    int in_session;          /* a host HELLO was answered since boot */
    int have_last;           /* last_seq/last_type/last_code describe the last answer */
    uint8_t last_seq, last_type, last_code;
    uint32_t asm_mid;        /* message being reassembled */
    size_t asm_len;
    int asm_active, asm_refused;
    uint32_t dedupe_mid[FB_DEDUPE_SLOTS];
    uint8_t dedupe_code[FB_DEDUPE_SLOTS];
    uint8_t dedupe_used, dedupe_next;
    uint8_t tx_body[FB_TX_BODY_MAX];
    uint8_t tx_wire[FB_TX_BODY_MAX + 2];
    struct fb_link_stats stats;
};

/* Check cfg (returns -1 if a buffer is too small for max_payload) and reset all state. */
int fb_link_init(struct fb_link *link, const struct fb_link_config *cfg);
/* Announce a (re)boot: writes a flushing 0x00 and HELLO. Call once after init. */
void fb_link_boot(struct fb_link *link);
/* Feed received bytes: any amount, any split; callbacks run from inside. */
void fb_link_feed(struct fb_link *link, const uint8_t *data, size_t len);
/* Restore a processed id (e.g. from non-volatile memory after a reboot) for dedupe. */
void fb_link_remember(struct fb_link *link, uint32_t mid, uint8_t result);

#ifdef __cplusplus
}
#endif
#endif
