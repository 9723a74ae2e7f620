/* The device end of the link: HELLO, stop-and-wait answers, dedupe, reassembly. PROTOCOL.md §4-7. */
#include "fieldgate_bridge.h"

#include <string.h>

static void send_frame(struct fb_link *l, uint8_t type, uint8_t seq, const uint8_t *payload,
                       size_t len)
{
    size_t n = fb_frame_encode(type, seq, payload, len, l->tx_wire, sizeof l->tx_wire);
    if (n > 0)
        l->cfg.write(l->cfg.ctx, l->tx_wire, n);
}

static size_t cut(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    return n > FB_INFO_STR_MAX ? FB_INFO_STR_MAX : n;
}

static size_t max_message(const struct fb_link *l)
{
    size_t single = (size_t)l->cfg.max_payload - FB_MID_BYTES;
    return l->cfg.msg_cap > single ? l->cfg.msg_cap : single;
}

static void send_hello(struct fb_link *l, uint8_t type, uint8_t seq)
{
    struct fb_mp_writer w;
    const char *fw = l->cfg.firmware ? l->cfg.firmware : "";
    const char *id = l->cfg.device_id ? l->cfg.device_id : "";
    fb_mp_writer_init(&w, l->tx_body, sizeof l->tx_body);
    fb_mp_write_map(&w, 5);
    fb_mp_write_str(&w, "v", 1);
    fb_mp_write_uint(&w, FB_PROTOCOL_VERSION);
    fb_mp_write_str(&w, "mp", 2);
    fb_mp_write_uint(&w, l->cfg.max_payload);
    fb_mp_write_str(&w, "mm", 2);
    fb_mp_write_uint(&w, max_message(l));
    fb_mp_write_str(&w, "fw", 2);
    fb_mp_write_str(&w, fw, cut(fw));
    fb_mp_write_str(&w, "id", 2);
    fb_mp_write_str(&w, id, cut(id));
    send_frame(l, type, seq, l->tx_body, fb_mp_writer_len(&w, l->tx_body));
}

int fb_link_init(struct fb_link *link, const struct fb_link_config *cfg)
{
    memset(link, 0, sizeof *link);
    if (cfg->write == NULL || cfg->on_message == NULL || cfg->rx_buf == NULL)
        return -1;
    if (cfg->max_payload < FB_MID_BYTES + 1u || cfg->max_payload > FB_MAX_PAYLOAD)
        return -1;
    /* one encoded frame of the announced size: body + 1 COBS byte */
    if (cfg->rx_cap < (size_t)cfg->max_payload + FB_MIN_BODY + 1u)
        return -1;
    if (cfg->msg_cap > 0 && cfg->msg_buf == NULL)
        return -1;
    link->cfg = *cfg;
    return 0;
}

void fb_link_boot(struct fb_link *link)
{
    static const uint8_t flush = 0;
    link->cfg.write(link->cfg.ctx, &flush, 1);
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
    l->have_last = 1;
    l->last_seq = seq;
    l->last_code = code;
    l->last_type = code == FB_OK ? FB_ACK : FB_REFUSE;
    if (code == FB_OK)
        send_frame(l, FB_ACK, seq, NULL, 0);
    else
        send_frame(l, FB_REFUSE, seq, &code, 1);
}

static uint8_t deliver(struct fb_link *l, uint32_t mid, const uint8_t *msg, size_t len)
{
    uint8_t code = l->cfg.on_message(l->cfg.ctx, mid, msg, len);
    if (code == FB_OK)
        l->stats.messages++;
    else
        l->stats.refusals++;
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
        return FB_BAD_MESSAGE;
    mid = ((uint32_t)f->payload[0] << 24) | ((uint32_t)f->payload[1] << 16) |
          ((uint32_t)f->payload[2] << 8) | f->payload[3];
    data = f->payload + FB_MID_BYTES;
    len = f->payload_len - FB_MID_BYTES;
    if (recall(l, mid, &code)) {
        l->stats.duplicates++;
        l->asm_active = 0;
        return code; /* processed before (perhaps before a reboot): same answer, no callback */
    }
    if (!l->asm_active || l->asm_mid != mid) {
        l->asm_active = 0;
        l->asm_refused = 0;
        l->asm_len = 0;
        if (f->type == FB_DATA)
            return deliver(l, mid, data, len); /* whole message: straight from rx_buf */
        l->asm_active = 1;
        l->asm_mid = mid;
    }
    if (l->asm_refused || l->asm_len + len > l->cfg.msg_cap) {
        l->asm_refused = 1;
        if (f->type == FB_DATA) {
            l->asm_active = 0;
            l->stats.refusals++;
            fb_link_remember(l, mid, FB_TOO_BIG);
        }
        return FB_TOO_BIG;
    }
    if (len > 0)
        memcpy(l->cfg.msg_buf + l->asm_len, data, len);
    l->asm_len += len;
    if (f->type == FB_DATA_MORE)
        return FB_OK;
    l->asm_active = 0;
    return deliver(l, mid, l->cfg.msg_buf, l->asm_len);
}

static void on_frame(struct fb_link *l, uint8_t *buf, size_t len)
{
    struct fb_frame f;
    int rc = fb_frame_decode(buf, len, &f);
    switch (rc) {
    case FB_FRAME_OK:
        l->stats.rx_frames++;
        break;
    case FB_FRAME_VERSION:
        l->stats.rx_bad_version++;
        return;
    case FB_FRAME_OVERSIZE:
        l->stats.rx_oversize++;
        return;
    default:
        if (rc == FB_FRAME_CRC)
            l->stats.rx_bad_crc++;
        else if (rc == FB_FRAME_SHORT)
            l->stats.rx_bad_short++;
        else
            l->stats.rx_bad_cobs++;
        if (l->in_session) /* ask for the outstanding frame now instead of at the host's RTO */
            send_frame(l, FB_NAK, l->last_seq, NULL, 0);
        return;
    }
    switch (f.type) {
    case FB_HELLO:
        l->in_session = 1;
        l->have_last = 0;
        l->asm_active = 0;
        send_hello(l, FB_HELLO_ACK, f.seq);
        return;
    case FB_PING:
        if (l->in_session)
            send_frame(l, FB_PONG, f.seq, NULL, 0);
        else
            send_hello(l, FB_HELLO, 0);
        return;
    case FB_DATA:
    case FB_DATA_MORE:
        if (!l->in_session) {
            send_hello(l, FB_HELLO, 0); /* the host missed our boot HELLO */
            return;
        }
        if (l->have_last && f.seq == l->last_seq) {
            l->stats.duplicates++; /* our answer was lost: repeat it, do not process again */
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
                link->rx_overflow = 1; /* drop the rest of this frame, resync at the next 0x00 */
            continue;
        }
        if (link->rx_overflow)
            link->stats.rx_oversize++;
        else if (link->rx_len > 0)
            on_frame(link, link->cfg.rx_buf, link->rx_len);
        link->rx_len = 0;
        link->rx_overflow = 0;
    }
}
