/*
 * fieldgate firmware-bridge: the microcontroller end of the fieldgate serial link.
 *
 * Portable C99, no heap, no dependencies. The integrator owns every buffer (sized with the
 * constants below), feeds received bytes with fb_link_feed() and gets one callback per complete
 * message. The byte-level protocol is PROTOCOL.md beside this directory.
 *
 * Built and tested for 64-bit hosts, AVR (ATmega328P, run in simavr) and Cortex-M0, with
 * -Wconversion -Wsign-conversion -Werror; on AVR the constant tables live in flash (PROGMEM).
 *
 * Callback rules (see fb_message_fn and fb_write_fn below):
 *  - callbacks run synchronously inside fb_link_feed() (and fb_link_boot() for write);
 *  - fb_link_feed(), fb_link_boot(), fb_link_init() and fb_link_remember() must not be called
 *    from inside a callback, nor from an interrupt while the main loop is inside one of them:
 *    the link is not re-entrant. Feed it from one context (e.g. the main loop draining a ring
 *    buffer that the UART interrupt fills, as examples/baremetal does);
 *  - `msg` in on_message points into the library's receive or reassembly buffer and is valid
 *    only until on_message returns: copy what you keep;
 *  - `data` in write points into the link's transmit buffer, which the next frame overwrites:
 *    a write callback that queues the bytes (DMA, interrupt-driven TX) must copy them.
 */
#ifndef FIELDGATE_BRIDGE_H
#define FIELDGATE_BRIDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Link statistics (struct fb_link_stats, 36 bytes of RAM) are compiled in unless FB_STATS is 0.
 * AVR parts have 2 KB of RAM, so there the default is off; build with -DFB_STATS=1 to count. */
#ifndef FB_STATS
#if defined(__AVR__)
#define FB_STATS 0
#else
#define FB_STATS 1
#endif
#endif

#define FB_PROTOCOL_VERSION 1u
/* A body (hdr, seq, payload, CRC-16) is at most 254 bytes, so COBS adds exactly one byte and a
 * frame is at most 256 bytes on the wire with its delimiter. */
#define FB_MAX_BODY 254u
#define FB_MAX_WIRE (FB_MAX_BODY + 2u)
#define FB_MIN_BODY 4u
#define FB_MAX_PAYLOAD (FB_MAX_BODY - FB_MIN_BODY) /* 250 */
#define FB_MID_BYTES 4u
/* The host's HELLO payload is at most this long (PROTOCOL.md §5; today's is 9 bytes), so that
 * a device announcing a tiny max_payload still hears it. */
#define FB_HOST_HELLO_MAX 16u
/* The receive buffer holds one encoded frame (delimiter excluded): the body plus its one COBS
 * byte. FB_RX_BUF_FOR(mp) is what a device announcing max_payload mp needs; FB_RX_BUF_SIZE is
 * the largest (mp 250: 255 bytes). A 64-byte-payload device needs 69. */
#define FB_RX_BUF_FOR(mp)                                                                        \
    ((size_t)((mp) > FB_HOST_HELLO_MAX ? (mp) : FB_HOST_HELLO_MAX) + FB_MIN_BODY + 1u)
#define FB_RX_BUF_SIZE FB_RX_BUF_FOR(FB_MAX_PAYLOAD)
/* Processed message ids remembered for duplicate suppression: the host has one message in flight,
 * so a few cover retransmissions across link resets; 8 also covers a burst of refusals. */
#define FB_DEDUPE_SLOTS 8u
/* The firmware and device id strings in HELLO are cut to this many BYTES, never inside a UTF-8
 * character (so a cut string may be up to 3 bytes shorter). */
#define FB_INFO_STR_MAX 24u
/* The largest frame payload the device sends: its HELLO map, fixmap(1) + "v"(2)+1 + "mp"(3)+2
 * + "mm"(3)+5 + "fw"(3)+1+24 + "id"(3)+1+24 = 73 bytes. Everything else it sends is shorter
 * (REFUSE: 1 byte). */
#define FB_TX_PAYLOAD_MAX 73u
/* One transmit buffer holds a whole encoded frame: body + COBS byte + delimiter. */
#define FB_TX_WIRE_MAX (FB_TX_PAYLOAD_MAX + FB_MIN_BODY + 2u)
/* fb_frame_encode() may read its payload from inside its output buffer at this offset, so a
 * frame is encoded in place with no second buffer (the link's HELLO is). */
#define FB_FRAME_INPLACE_OFFSET 3u

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
/* Encode one frame (delimiter included) into out; returns its length or 0 if cap is short
 * (it needs len + 6 bytes). payload may be out + FB_FRAME_INPLACE_OFFSET (in-place encoding);
 * any other overlap is undefined. */
size_t fb_frame_encode(uint8_t type, uint8_t seq, const uint8_t *payload, size_t len,
                       uint8_t *out, size_t cap);

/* ---- minimal msgpack ------------------------------------------------------------------------ */

/* A bounds-checked reader: every call returns 0 on success, -1 on truncated or unexpected
 * input (after which the reader stays failed). Lengths are uint32_t as msgpack's are: a
 * str32/bin32/ext32 length is checked against the bytes present before anything is read, also
 * where size_t has 16 bits (AVR). */
struct fb_mp_reader {
    const uint8_t *p;
    const uint8_t *end;
    uint8_t failed;
};

void fb_mp_reader_init(struct fb_mp_reader *r, const uint8_t *data, size_t len);
int fb_mp_read_map(struct fb_mp_reader *r, uint32_t *count);
int fb_mp_read_str(struct fb_mp_reader *r, const char **s, uint32_t *len);
int fb_mp_read_bin(struct fb_mp_reader *r, const uint8_t **b, uint32_t *len);
int fb_mp_read_uint(struct fb_mp_reader *r, uint64_t *v);
int fb_mp_read_nil(struct fb_mp_reader *r); /* 0 and consumed if the next item is nil */
/* Skip one item of any type; at most FB_MP_MAX_DEPTH nested arrays/maps (the item itself
 * counting as the first), deeper input is refused. */
int fb_mp_skip(struct fb_mp_reader *r);
#define FB_MP_MAX_DEPTH 4u

struct fb_mp_writer {
    uint8_t *p;
    uint8_t *end;
    uint8_t failed;
};

void fb_mp_writer_init(struct fb_mp_writer *w, uint8_t *buf, size_t cap);
void fb_mp_write_map(struct fb_mp_writer *w, uint32_t count);
void fb_mp_write_str(struct fb_mp_writer *w, const char *s, size_t len);
void fb_mp_write_uint(struct fb_mp_writer *w, uint32_t v);
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

/* 0 when data is exactly one envelope map with at least "id" (str) and "body" (bin); the
 * pointers then point into data. -1 otherwise (PROTOCOL.md §8 lists what is refused). */
int fb_envelope_parse(const uint8_t *data, size_t len, struct fb_envelope *env);

/* ---- the link ------------------------------------------------------------------------------- */

/* Called once per complete, new message; return FB_OK when processed, or a refusal code.
 * msg points into rx_buf or msg_buf and is valid only during the call (copy what you keep).
 * Do not call fb_link_* from here; any work that must outlast the call is the application's. */
typedef uint8_t (*fb_message_fn)(void *ctx, uint32_t mid, const uint8_t *msg, size_t len);
/* Write bytes to the UART; must take all of them (block or queue). data is the link's transmit
 * buffer, reused for the next frame: a queueing implementation must copy. Do not call fb_link_*
 * from here. */
typedef void (*fb_write_fn)(void *ctx, const uint8_t *data, size_t len);

struct fb_link_config {
    uint8_t *rx_buf; /* one encoded frame: FB_RX_BUF_FOR(max_payload) bytes */
    size_t rx_cap;
    uint8_t *msg_buf; /* reassembly of fragmented messages: the largest message you accept */
    size_t msg_cap;
    uint8_t max_payload; /* announced largest frame payload (<= FB_MAX_PAYLOAD, >= 5) */
    const char *firmware; /* announced in HELLO, cut to FB_INFO_STR_MAX bytes */
    const char *device_id;
    fb_message_fn on_message;
    fb_write_fn write;
    void *ctx;
};

#if FB_STATS
struct fb_link_stats {
    uint32_t rx_frames, rx_bad_cobs, rx_bad_short, rx_bad_crc, rx_bad_version, rx_oversize;
    uint32_t messages, duplicates, refusals;
};
#endif

/* Link state flags (struct fb_link.flags). */
#define FB_F_RX_OVERFLOW 0x01u /* dropping the rest of an oversized frame until the next 0x00 */
#define FB_F_SESSION 0x02u     /* a host HELLO was answered since boot */
#define FB_F_HAVE_LAST 0x04u   /* last_seq/last_code describe the last DATA answer */
#define FB_F_ASSEMBLING 0x08u  /* asm_mid/asm_len describe a message being reassembled */

struct fb_link {
    struct fb_link_config cfg;
    size_t rx_len;
    size_t asm_len;
    uint32_t asm_mid; /* message being reassembled */
    uint32_t dedupe_mid[FB_DEDUPE_SLOTS];
    uint8_t dedupe_code[FB_DEDUPE_SLOTS];
    uint8_t dedupe_used, dedupe_next;
    uint8_t flags;
    uint8_t last_seq;  /* seq of the last DATA answered; 0xFF before any in this session */
    uint8_t last_code; /* its answer: FB_OK (ACK) or a refusal code (REFUSE) */
    uint8_t tx[FB_TX_WIRE_MAX]; /* the one transmit buffer: every frame is encoded here */
#if FB_STATS
    struct fb_link_stats stats;
#endif
};

/* Check cfg (returns -1 if a buffer is too small for max_payload) and reset all state. */
int fb_link_init(struct fb_link *link, const struct fb_link_config *cfg);
/* Announce a (re)boot: writes a flushing 0x00 and HELLO. Call once after init. */
void fb_link_boot(struct fb_link *link);
/* Feed received bytes: any amount, any split; callbacks run from inside. Not re-entrant. */
void fb_link_feed(struct fb_link *link, const uint8_t *data, size_t len);
/* Restore a processed id (e.g. from non-volatile memory after a reboot) for dedupe. */
void fb_link_remember(struct fb_link *link, uint32_t mid, uint8_t result);

#ifdef __cplusplus
}
#endif
#endif
