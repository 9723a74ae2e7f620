/* The device end of the link: HELLO, stop-and-wait answers, dedupe, reassembly. PROTOCOL.md §4-7. */
#include "fieldgate_bridge.h"
#include "fb_platform.h"

#include <string.h>

#if FB_STATS
#define COUNT(l, name) ((l)->stats.name++)
#else
#define COUNT(l, name) ((void)0)
#endif

/* Encode a frame into the one transmit buffer and write it. payload may already sit in the
 * buffer at FB_FRAME_INPLACE_OFFSET (HELLO is built there). */
static void send_frame(struct fb_link *l, uint8_t type, uint8_t seq, const uint8_t *payload,
                       size_t len)
{
    size_t n = fb_frame_encode(type, seq, payload, len, l->tx, sizeof l->tx);
    if (n > 0)
        l->cfg.write(l->cfg.ctx, l->tx, n);
}

static int utf8_continuation(char c)
{
    return ((unsigned char)c & 0xC0u) == 0x80u;
}

/* Length of s cut to FB_INFO_STR_MAX bytes, never inside a UTF-8 character: if the first byte
 * left out continues a character, the cut moves back to that character's first byte (at most 3
 * bytes: no UTF-8 character is longer than 4). */
static size_t cut_utf8(const char *s)
{
    size_t n = 0;
    unsigned back;
    while (n <= FB_INFO_STR_MAX && s[n] != '\0')
        n++;
    if (n <= FB_INFO_STR_MAX)
        return n;
    n = FB_INFO_STR_MAX;
    for (back = 0; back < 3u && n > 0 && utf8_continuation(s[n]); back++)
        n--;
    return n;
}

/* A HELLO string; NULL is the empty string (no "" literal: on AVR it would cost RAM). */
static void write_info(struct fb_mp_writer *w, const char *s)
{
    size_t n = s ? cut_utf8(s) : 0;
    fb_mp_write_str(w, n ? s : (const char *)w->p, n);
}

static uint32_t max_message(const struct fb_link *l)
{
    size_t single = (size_t)l->cfg.max_payload - FB_MID_BYTES;
    size_t mm = l->cfg.msg_cap > single ? l->cfg.msg_cap : single;
#if SIZE_MAX > 0xFFFFFFFFu
    if (mm > 0xFFFFFFFFu)
        return 0xFFFFFFFFu; /* msgpack's uint32 is the largest size HELLO announces */
#endif
    return (uint32_t)mm;
}

/* The keys of the device's HELLO map, in flash: fixmap(5) "v" 1, then "mp", "mm", "fw", "id". */
static const uint8_t hello_head[] FB_FLASH = {0x85, 0xa1, 'v', FB_PROTOCOL_VERSION, 0xa2, 'm', 'p'};
static const uint8_t key_mm[] FB_FLASH = {0xa2, 'm', 'm'};
static const uint8_t key_fw[] FB_FLASH = {0xa2, 'f', 'w'};
static const uint8_t key_id[] FB_FLASH = {0xa2, 'i', 'd'};

static void send_hello(struct fb_link *l, uint8_t type, uint8_t seq)
{
    /* Built in place in the transmit buffer, where fb_frame_encode can read it back. */
    uint8_t *map = l->tx + FB_FRAME_INPLACE_OFFSET;
    struct fb_mp_writer w;
    fb_mp_writer_init(&w, map, FB_TX_PAYLOAD_MAX);
    fb_mp_write_flash(&w, hello_head, sizeof hello_head);
    fb_mp_write_uint(&w, l->cfg.max_payload);
    fb_mp_write_flash(&w, key_mm, sizeof key_mm);
    fb_mp_write_uint(&w, max_message(l));
    fb_mp_write_flash(&w, key_fw, sizeof key_fw);
    write_info(&w, l->cfg.firmware);
    fb_mp_write_flash(&w, key_id, sizeof key_id);
    write_info(&w, l->cfg.device_id);
    send_frame(l, type, seq, map, fb_mp_writer_len(&w, map));
}

/* A new session (or boot): no DATA answered yet, nothing being reassembled. */
static void reset_session(struct fb_link *l)
{
    l->flags &= (uint8_t)~(FB_F_HAVE_LAST | FB_F_ASSEMBLING);
    l->last_seq = 0xFF; /* NAKs name the seq before the host's first (0) until a DATA is answered */
    l->last_code = FB_OK;
}

int fb_link_init(struct fb_link *link, const struct fb_link_config *cfg)
{
    memset(link, 0, sizeof *link);
    if (cfg->write == NULL || cfg->on_message == NULL || cfg->rx_buf == NULL)
        return -1;
    if (cfg->max_payload < FB_MID_BYTES + 1u || cfg->max_payload > FB_MAX_PAYLOAD)
        return -1;
    if (cfg->rx_cap < FB_RX_BUF_FOR(cfg->max_payload))
        return -1;
    if (cfg->msg_cap > 0 && cfg->msg_buf == NULL)
        return -1;
    link->cfg = *cfg;
    reset_session(link);
    return 0;
}

void fb_link_boot(struct fb_link *link)
{
    link->tx[0] = 0; /* a lone delimiter flushes whatever the host's receiver holds */
    link->cfg.write(link->cfg.ctx, link->tx, 1);
    send_hello(link, FB_HELLO, 0);
}

void fb_link_remember(struct fb_link *link, uint32_t mid, uint8_t result)
{
    link->dedupe_mid[link->dedupe_next] = mid;
    link->dedupe_code[link->dedupe_next] = result;
    link->dedupe_next = (uint8_t)((link->dedupe_next + 1u) % FB_DEDUPE_SLOTS);
    if (link->dedupe_used < FB_DEDUPE_SLOTS)
        link->dedupe_used++;
}

static int recall(const struct fb_link *l, uint32_t mid, uint8_t *result)
{
    unsigned i;
    for (i = 0; i < l->dedupe_used; i++) {
        if (l->dedupe_mid[i] == mid) {
            *result = l->dedupe_code[i];
            return 1;
        }
    }
    return 0;
}

static void answer(struct fb_link *l, uint8_t seq, uint8_t code)
{
    l->flags |= FB_F_HAVE_LAST;
    l->last_seq = seq;
    l->last_code = code;
    if (code == FB_OK) {
        send_frame(l, FB_ACK, seq, NULL, 0);
    } else {
        l->tx[FB_FRAME_INPLACE_OFFSET] = code;
        send_frame(l, FB_REFUSE, seq, l->tx + FB_FRAME_INPLACE_OFFSET, 1);
    }
}

static uint8_t deliver(struct fb_link *l, uint32_t mid, const uint8_t *msg, size_t len)
{
    uint8_t code = l->cfg.on_message(l->cfg.ctx, mid, msg, len);
    if (code == FB_OK)
        COUNT(l, messages);
    else
        COUNT(l, refusals);
    if (code != FB_BUSY) /* a transient refusal must be processed again when retried */
        fb_link_remember(l, mid, code);
    return code;
}

static uint8_t on_data(struct fb_link *l, const struct fb_frame *f)
{
    uint32_t mid;
    const uint8_t *data;
    size_t len;
    uint8_t code;
    if (f->payload_len < FB_MID_BYTES)
        return FB_BAD_MESSAGE; /* no message id: refused, and nothing to remember it by */
    mid = ((uint32_t)f->payload[0] << 24) | ((uint32_t)f->payload[1] << 16) |
          ((uint32_t)f->payload[2] << 8) | f->payload[3];
    data = f->payload + FB_MID_BYTES;
    len = f->payload_len - FB_MID_BYTES;
    if (recall(l, mid, &code)) {
        COUNT(l, duplicates);
        l->flags &= (uint8_t)~FB_F_ASSEMBLING;
        return code; /* processed before (perhaps before a reboot): same answer, no callback */
    }
    if (!(l->flags & FB_F_ASSEMBLING) || l->asm_mid != mid) {
        /* A new message; a partial one with another id is dropped (PROTOCOL.md §7). */
        l->flags &= (uint8_t)~FB_F_ASSEMBLING;
        if (f->type == FB_DATA)
            return deliver(l, mid, data, len); /* whole message: straight from rx_buf */
        l->flags |= FB_F_ASSEMBLING;
        l->asm_mid = mid;
        l->asm_len = 0;
    }
    if (l->cfg.msg_cap == 0 || len > l->cfg.msg_cap - l->asm_len) {
        /* This fragment does not fit: refuse it, and remember the id so that every later frame
         * of the message (a retransmission, a resend after a reset) is refused at once. */
        l->flags &= (uint8_t)~FB_F_ASSEMBLING;
        COUNT(l, refusals);
        fb_link_remember(l, mid, FB_TOO_BIG);
        return FB_TOO_BIG;
    }
    if (len > 0)
        memcpy(l->cfg.msg_buf + l->asm_len, data, len);
    l->asm_len += len;
    if (f->type == FB_DATA_MORE)
        return FB_OK;
    l->flags &= (uint8_t)~FB_F_ASSEMBLING;
    return deliver(l, mid, l->cfg.msg_buf, l->asm_len);
}

static void on_frame(struct fb_link *l, uint8_t *buf, size_t len)
{
    struct fb_frame f;
    int rc = fb_frame_decode(buf, len, &f);
    switch (rc) {
    case FB_FRAME_OK:
        COUNT(l, rx_frames);
        break;
    case FB_FRAME_VERSION:
        COUNT(l, rx_bad_version);
        return;
    case FB_FRAME_OVERSIZE:
        COUNT(l, rx_oversize);
        return;
    default:
        if (rc == FB_FRAME_CRC)
            COUNT(l, rx_bad_crc);
        else if (rc == FB_FRAME_SHORT)
            COUNT(l, rx_bad_short);
        else
            COUNT(l, rx_bad_cobs);
        if (l->flags & FB_F_SESSION) /* ask for the outstanding frame now, not at the host's RTO */
            send_frame(l, FB_NAK, l->last_seq, NULL, 0);
        return;
    }
    switch (f.type) {
    case FB_HELLO:
        /* The host's map is not read in version 1 (PROTOCOL.md §5): any payload opens a session. */
        l->flags |= FB_F_SESSION;
        reset_session(l);
        send_hello(l, FB_HELLO_ACK, f.seq);
        return;
    case FB_PING:
        if (l->flags & FB_F_SESSION)
            send_frame(l, FB_PONG, f.seq, NULL, 0);
        else
            send_hello(l, FB_HELLO, 0);
        return;
    case FB_DATA:
    case FB_DATA_MORE:
        if (f.payload_len > l->cfg.max_payload) {
            COUNT(l, rx_oversize); /* larger than announced: dropped as if it overran rx_buf */
            return;
        }
        if (!(l->flags & FB_F_SESSION)) {
            send_hello(l, FB_HELLO, 0); /* the host missed our boot HELLO */
            return;
        }
        if ((l->flags & FB_F_HAVE_LAST) && f.seq == l->last_seq) {
            COUNT(l, duplicates); /* our answer was lost: repeat it, do not process again */
            answer(l, f.seq, l->last_code);
            return;
        }
        answer(l, f.seq, on_data(l, &f));
        return;
    default:
        return; /* ACK/NAK/PONG/...: the device sends no DATA in protocol version 1 */
    }
}

void fb_link_feed(struct fb_link *link, const uint8_t *data, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        uint8_t b = data[i];
        if (b != 0) {
            if (link->rx_len < link->cfg.rx_cap)
                link->cfg.rx_buf[link->rx_len++] = b;
            else
                link->flags |= FB_F_RX_OVERFLOW; /* drop the rest, resync at the next 0x00 */
            continue;
        }
        if (link->flags & FB_F_RX_OVERFLOW)
            COUNT(link, rx_oversize);
        else if (link->rx_len > 0)
            on_frame(link, link->cfg.rx_buf, link->rx_len);
        link->rx_len = 0;
        link->flags &= (uint8_t)~FB_F_RX_OVERFLOW;
    }
}
