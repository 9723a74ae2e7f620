/*
 * Bare-metal example: the firmware-bridge on a UART with a receive interrupt and a main loop.
 *
 * Port it by filling in the three uart_* functions for your part. Built with -DFB_HOST_BUILD
 * (as `make test` does) the UART is an in-memory stand-in that plays a short host session, so
 * the example is compiled and run on every test.
 */
#include "fieldgate_bridge.h"

#include <string.h>

/* Buffers are the integrator's: one encoded frame, and the largest message we accept. */
static uint8_t rx_frame[FB_RX_BUF_SIZE];
static uint8_t message[512];
static struct fb_link link;

/* An interrupt-filled ring between the UART ISR and the main loop. */
#define RING_SIZE 64u /* power of two; at 115200 baud the main loop must drain it every 5 ms */
static volatile uint8_t ring[RING_SIZE];
static volatile uint8_t ring_head, ring_tail;

#ifdef FB_HOST_BUILD
#include <stdio.h>
static uint8_t host_out[1024];
static size_t host_out_len;
static void uart_putc(uint8_t b) { host_out[host_out_len++ % sizeof host_out] = b; }
static void uart_init(void) {}
#else
static void uart_init(void) { /* clocks, pins, 115200 8N1, RX interrupt enable */ }
static void uart_putc(uint8_t b) { (void)b; /* wait for TX empty, write the data register */ }
#endif

/* Call from the UART RX interrupt with the received byte. */
void uart_rx_isr(uint8_t byte)
{
    uint8_t next = (uint8_t)((ring_head + 1u) & (RING_SIZE - 1u));
    if (next != ring_tail) { /* on overflow the byte is lost: the CRC catches it, host resends */
        ring[ring_head] = byte;
        ring_head = next;
    }
}

static void uart_write(void *ctx, const uint8_t *data, size_t len)
{
    size_t i;
    (void)ctx;
    for (i = 0; i < len; i++)
        uart_putc(data[i]);
}

static unsigned processed;

static uint8_t on_message(void *ctx, uint32_t mid, const uint8_t *msg, size_t len)
{
    struct fb_envelope env;
    (void)ctx;
    (void)mid;
    if (fb_envelope_parse(msg, len, &env) != 0)
        return FB_BAD_MESSAGE;
    /* act on env.body / env.body_len here; refuse with a code >= 0x80 if it makes no sense */
    processed++;
    return FB_OK;
}

static void poll_uart(void)
{
    while (ring_tail != ring_head) {
        uint8_t b = ring[ring_tail];
        ring_tail = (uint8_t)((ring_tail + 1u) & (RING_SIZE - 1u));
        fb_link_feed(&link, &b, 1);
    }
}

int main(void)
{
    struct fb_link_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.rx_buf = rx_frame;
    cfg.rx_cap = sizeof rx_frame;
    cfg.msg_buf = message;
    cfg.msg_cap = sizeof message;
    cfg.max_payload = FB_MAX_PAYLOAD;
    cfg.firmware = "example-1.0";
    cfg.device_id = "baremetal-0001";
    cfg.on_message = on_message;
    cfg.write = uart_write;
    uart_init();
    if (fb_link_init(&link, &cfg) != 0)
        return 1;
    fb_link_boot(&link);
#ifdef FB_HOST_BUILD
    {
        /* host HELLO, then DATA seq 0 with mid 1 and a tiny envelope {"id":"a","body":b"x"} */
        static const uint8_t hello[] = {0x82, 0xa1, 'v', 0x01, 0xa2, 'm', 'p', 0xcc, 0xfa};
        static const uint8_t data[] = {0, 0, 0, 1, 0x82, 0xa2, 'i', 'd', 0xa1, 'a',
                                       0xa4, 'b', 'o', 'd', 'y', 0xc4, 0x01, 'x'};
        uint8_t wire[64];
        size_t n, i;
        n = fb_frame_encode(FB_HELLO, 0, hello, sizeof hello, wire, sizeof wire);
        for (i = 0; i < n; i++)
            uart_rx_isr(wire[i]);
        poll_uart();
        n = fb_frame_encode(FB_DATA, 0, data, sizeof data, wire, sizeof wire);
        for (i = 0; i < n; i++) {
            uart_rx_isr(wire[i]);
            poll_uart();
        }
        /* the last frame written must be ACK seq 0: 05 12 00 crc crc 00 */
        if (processed != 1 || host_out_len < 6 || host_out[host_out_len - 5] != 0x12) {
            fprintf(stderr, "baremetal example: expected one message and an ACK\n");
            return 1;
        }
        printf("baremetal example: HELLO, one message, ACK: ok\n");
        return 0;
    }
#else
    for (;;) {
        poll_uart();
        /* sleep until the next interrupt (WFI) */
    }
#endif
}
