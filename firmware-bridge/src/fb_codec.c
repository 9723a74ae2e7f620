/* COBS, CRC-16/CCITT-FALSE and frame encode/decode. See PROTOCOL.md §2-3. */
#include "fieldgate_bridge.h"
#include "fb_platform.h"

/* Nibble table: 32 bytes of flash (PROGMEM on AVR), two lookups per byte: fast enough for
 * 8-bit parts, and a 256-entry table would cost 512 bytes. */
static const uint16_t crc_table[16] FB_FLASH = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7,
    0x8108, 0x9129, 0xa14a, 0xb16b, 0xc18c, 0xd1ad, 0xe1ce, 0xf1ef};

static uint16_t crc_nibble(uint16_t crc, unsigned nibble)
{
    return (uint16_t)((unsigned)(crc << 4) ^ fb_flash_word(&crc_table[((crc >> 12) ^ nibble) & 0x0Fu]));
}

static uint16_t crc16_update(uint16_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        crc = crc_nibble(crc, (unsigned)data[i] >> 4);
        crc = crc_nibble(crc, data[i] & 0x0Fu);
    }
    return crc;
}

uint16_t fb_crc16(const uint8_t *data, size_t len)
{
    return crc16_update(0xFFFFu, data, len);
}

size_t fb_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
    size_t r = 0, w = 1, code_at = 0;
    uint8_t code = 1;
    if (cap == 0)
        return 0;
    while (r < len) {
        if (in[r] == 0) {
            out[code_at] = code;
            code = 1;
            code_at = w++;
            if (w > cap)
                return 0;
        } else {
            if (w >= cap)
                return 0;
            out[w++] = in[r];
            code++;
            if (code == 0xFF && r + 1 < len) {
                out[code_at] = code;
                code = 1;
                code_at = w++;
                if (w > cap)
                    return 0;
            }
        }
        r++;
    }
    out[code_at] = code;
    return w;
}

long fb_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
    size_t r = 0, w = 0;
    while (r < len) {
        uint8_t code = in[r];
        size_t end = r + code, i;
        if (code == 0 || end > len)
            return -1;
        r++;
        for (i = r; i < end; i++) {
            if (in[i] == 0 || w >= cap)
                return -1;
            out[w++] = in[i]; /* w < r always holds, so decoding in place is safe */
        }
        r = end;
        if (code != 0xFF && r < len) {
            if (w >= cap)
                return -1;
            out[w++] = 0;
        }
    }
    return (long)w;
}

int fb_frame_decode(uint8_t *buf, size_t len, struct fb_frame *frame)
{
    long n;
    uint16_t crc;
    if (len > FB_MAX_WIRE - 1u)
        return FB_FRAME_OVERSIZE;
    n = fb_cobs_decode(buf, len, buf, len);
    if (n < 0)
        return FB_FRAME_COBS;
    if ((size_t)n < FB_MIN_BODY)
        return FB_FRAME_SHORT;
    crc = (uint16_t)(((uint16_t)buf[n - 2] << 8) | buf[n - 1]);
    if (fb_crc16(buf, (size_t)n - 2u) != crc)
        return FB_FRAME_CRC;
    if ((buf[0] >> 4) != FB_PROTOCOL_VERSION)
        return FB_FRAME_VERSION;
    frame->type = (uint8_t)(buf[0] & 0x0Fu);
    frame->seq = buf[1];
    frame->payload = buf + 2;
    frame->payload_len = (size_t)n - FB_MIN_BODY;
    return FB_FRAME_OK;
}

static uint8_t body_byte(uint8_t hdr, uint8_t seq, const uint8_t *payload, size_t len,
                         uint16_t crc, size_t k)
{
    if (k == 0)
        return hdr;
    if (k == 1)
        return seq;
    if (k < len + 2u)
        return payload[k - 2u];
    if (k == len + 2u)
        return (uint8_t)(crc >> 8);
    return (uint8_t)(crc & 0xFFu);
}

size_t fb_frame_encode(uint8_t type, uint8_t seq, const uint8_t *payload, size_t len,
                       uint8_t *out, size_t cap)
{
    /* COBS over the logical body (hdr, seq, payload, CRC) without materialising it: no scratch
     * buffer, so the caller needs only the output (len + 6 bytes). Body byte k lands at out[k+1]
     * (a zero's slot takes the next block's code, patched later), so a payload placed at
     * out + FB_FRAME_INPLACE_OFFSET is read at each index just before that index is written. */
    uint8_t hdr = (uint8_t)((FB_PROTOCOL_VERSION << 4) | (type & 0x0Fu));
    uint8_t head[2];
    size_t body_len = len + FB_MIN_BODY, k, w = 1, code_at = 0;
    uint8_t code = 1;
    uint16_t crc;
    if (len > FB_MAX_PAYLOAD || cap < body_len + 2u)
        return 0;
    head[0] = hdr;
    head[1] = seq;
    crc = crc16_update(fb_crc16(head, 2), payload, len);
    /* body_len <= 254, so no 0xFF block split is ever needed. */
    for (k = 0; k < body_len; k++) {
        uint8_t b = body_byte(hdr, seq, payload, len, crc, k);
        if (b == 0) {
            out[code_at] = code;
            code = 1;
            code_at = w++;
        } else {
            out[w++] = b;
            code++;
        }
    }
    out[code_at] = code;
    out[w++] = 0;
    return w;
}
