#include "fieldgate_bridge.h"
/* A whole device for tools/footprint.sh: the link on a UART data register at UART_ADDR, with
 * (ENVELOPE=1) or without the envelope parser, or (FLOOR) only the UART loop, to subtract. */
#define UART (*(volatile uint8_t *)UART_ADDR)
#ifndef FLOOR
static uint8_t rx[FB_RX_BUF_FOR(58)], msg[96];
static struct fb_link link;
static void wr(void *c, const uint8_t *d, size_t n) { (void)c; while (n--) UART = *d++; }
static uint8_t on(void *c, uint32_t mid, const uint8_t *m, size_t n)
{
    (void)c; (void)mid;
#if ENVELOPE
    struct fb_envelope e;
    return fb_envelope_parse(m, n, &e) == 0 && e.body_len == 2 ? FB_OK : 0x80;
#else
    return n > 0 && m[0] == 'x' ? FB_OK : 0x80;
#endif
}
#endif
int main(void)
{
#ifndef FLOOR
    struct fb_link_config cfg = {rx, sizeof rx, msg, sizeof msg, 58, "fw", "id", on, wr, 0};
    fb_link_init(&link, &cfg);
    fb_link_boot(&link);
#endif
    for (;;) {
        uint8_t b = UART;
#ifndef FLOOR
        fb_link_feed(&link, &b, 1);
#else
        UART = b;
#endif
    }
}
