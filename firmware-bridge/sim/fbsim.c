/*
 * fbsim: a device simulator built on the firmware-bridge library.
 *
 * Speaks the link protocol on a pseudo-terminal it creates (the slave path is the first line on
 * stdout), on a given device path (--device), or on stdin/stdout (--stdio). It can drop, corrupt
 * and delay frames, and reboot, so that tests and benchmarks can exercise the host's recovery.
 * Every processed message is appended to --record FILE as "<mid hex> <message hex>".
 *
 * Its "non-volatile memory" is the record: the last FB_DEDUPE_SLOTS processed ids are restored on
 * start and on every simulated reboot, as a real device would from flash or RTC RAM.
 */
#define _XOPEN_SOURCE 600
#define _DEFAULT_SOURCE

#include "fieldgate_bridge.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define FW_VERSION "fbsim-1.0.0"
#define MSG_CAP 65536 /* the simulated device's reassembly buffer */

struct sim {
    int in_fd, out_fd, record_fd;
    double drop, corrupt;
    unsigned delay_ms;
    unsigned long reboot_after, processed, reboots;
    uint64_t rng;
    const char *refuse, *busy;
    int envelope_only; /* --payload envelope: every message must be an envelope */
    int reboot_now, mute;
    uint32_t nv_mid[FB_DEDUPE_SLOTS];
    uint8_t nv_code[FB_DEDUPE_SLOTS];
    unsigned nv_used, nv_next;
    uint8_t in_frame[1024];
    size_t in_len;
    uint8_t out[4096];
    size_t out_len;
    struct fb_link link;
    struct fb_link_config cfg;
};

static volatile sig_atomic_t usr1;

static void on_usr1(int sig)
{
    (void)sig;
    usr1 = 1;
}

static double rnd(struct sim *s)
{
    /* xorshift64*: reproducible with --seed, no libc state */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (double)((s->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pfd = {fd, POLLOUT, 0};
                poll(&pfd, 1, 100);
                continue;
            }
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void noisy(struct sim *s, uint8_t *frame, size_t len, int *drop)
{
    *drop = s->drop > 0 && rnd(s) < s->drop;
    if (!*drop && s->corrupt > 0 && len > 1 && rnd(s) < s->corrupt) {
        size_t at = (size_t)(rnd(s) * (double)(len - 1)); /* never the delimiter */
        frame[at] ^= (uint8_t)(1u << (unsigned)(rnd(s) * 8.0));
    }
}

/* Outgoing bytes arrive a frame at a time from the library; noise and delay apply per frame. */
static void sim_write(void *ctx, const uint8_t *data, size_t len)
{
    struct sim *s = ctx;
    int drop = 0;
    if (s->mute)
        return;
    if (len > sizeof s->out)
        return;
    memcpy(s->out, data, len);
    if (len > 1)
        noisy(s, s->out, len, &drop);
    if (drop)
        return;
    if (s->delay_ms)
        usleep(s->delay_ms * 1000u);
    write_all(s->out_fd, s->out, len);
}

static void nv_store(struct sim *s, uint32_t mid, uint8_t code)
{
    s->nv_mid[s->nv_next] = mid;
    s->nv_code[s->nv_next] = code;
    s->nv_next = (s->nv_next + 1u) % FB_DEDUPE_SLOTS;
    if (s->nv_used < FB_DEDUPE_SLOTS)
        s->nv_used++;
}

static int contains(const uint8_t *msg, size_t len, const char *text)
{
    size_t k = text ? strlen(text) : 0, i;
    for (i = 0; k > 0 && i + k <= len; i++)
        if (memcmp(msg + i, text, k) == 0)
            return 1;
    return 0;
}

static uint8_t sim_message(void *ctx, uint32_t mid, const uint8_t *msg, size_t len)
{
    struct sim *s = ctx;
    static char line[2 * MSG_CAP + 16];
    size_t i, n;
    if (s->envelope_only ||
        (len > 0 && ((msg[0] & 0xF0u) == 0x80u || msg[0] == 0xDE || msg[0] == 0xDF))) {
        struct fb_envelope env; /* looks like the gateway's envelope: it must parse */
        if (fb_envelope_parse(msg, len, &env) != 0)
            return FB_BAD_MESSAGE;
    }
    if (contains(msg, len, s->refuse))
        return 0x81;
    if (contains(msg, len, s->busy))
        return FB_BUSY; /* transient: not recorded, the host retries */
    if (s->record_fd >= 0) {
        n = (size_t)snprintf(line, sizeof line, "%08x ", (unsigned)mid);
        for (i = 0; i < len; i++)
            n += (size_t)snprintf(line + n, sizeof line - n, "%02x", msg[i]);
        line[n++] = '\n';
        write_all(s->record_fd, (const uint8_t *)line, n); /* one write: survives kill -9 */
    }
    nv_store(s, mid, FB_OK);
    s->processed++;
    if (s->reboot_after && s->processed % s->reboot_after == 0) {
        s->reboot_now = 1;
        s->mute = 1; /* reboot before the ACK leaves: the host must resend, we must dedupe */
    }
    return FB_OK;
}

static void boot(struct sim *s)
{
    unsigned i;
    fb_link_init(&s->link, &s->cfg);
    for (i = 0; i < s->nv_used; i++) {
        unsigned k = (s->nv_next + FB_DEDUPE_SLOTS - s->nv_used + i) % FB_DEDUPE_SLOTS;
        fb_link_remember(&s->link, s->nv_mid[k], s->nv_code[k]);
    }
    s->in_len = 0;
    s->mute = 0;
    s->reboot_now = 0;
    fb_link_boot(&s->link);
}

static void load_record(struct sim *s, const char *path)
{
    FILE *fp = fopen(path, "r");
    char buf[64];
    int c;
    if (!fp)
        return;
    /* read each line's leading id, skip the rest */
    while (fscanf(fp, "%63s", buf) == 1) {
        nv_store(s, (uint32_t)strtoul(buf, NULL, 16), FB_OK);
        while ((c = fgetc(fp)) != EOF && c != '\n') {
        }
    }
    fclose(fp);
}

static void feed(struct sim *s, const uint8_t *data, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        int drop = 0;
        if (s->in_len < sizeof s->in_frame)
            s->in_frame[s->in_len++] = data[i];
        if (data[i] != 0 && s->in_len < sizeof s->in_frame)
            continue;
        if (s->in_len > 1)
            noisy(s, s->in_frame, s->in_len, &drop);
        if (!drop)
            fb_link_feed(&s->link, s->in_frame, s->in_len);
        s->in_len = 0;
        if (s->reboot_now || usr1) {
            usr1 = 0;
            s->reboots++;
            boot(s);
            return; /* the rest of this read is lost with the reboot */
        }
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: fbsim [--device PATH | --stdio] [--drop RATE] [--corrupt RATE] [--delay MS]\n"
            "             [--reboot-after N] [--seed N] [--max-payload N] [--max-message N]\n"
            "             [--record FILE] [--id ID] [--firmware TEXT] [--payload envelope|auto]\n"
            "             [--refuse-containing TEXT] [--busy-containing TEXT]\n"
            "SIGUSR1 reboots the simulated device.\n");
}

int main(int argc, char **argv)
{
    static uint8_t rx[FB_RX_BUF_SIZE], msg[MSG_CAP];
    static struct sim s;
    const char *device = NULL, *record = NULL, *id = "fbsim", *firmware = FW_VERSION;
    int stdio = 0, i, keep_slave = -1;
    unsigned long max_payload = FB_MAX_PAYLOAD, max_message = MSG_CAP, seed = 1;
    uint8_t buf[4096];

    s.record_fd = -1;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--stdio") == 0) {
            stdio = 1;
            continue;
        }
        if (!v) {
            usage();
            return 2;
        }
        i++;
        if (strcmp(a, "--device") == 0) device = v;
        else if (strcmp(a, "--drop") == 0) s.drop = atof(v);
        else if (strcmp(a, "--corrupt") == 0) s.corrupt = atof(v);
        else if (strcmp(a, "--delay") == 0) s.delay_ms = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(a, "--reboot-after") == 0) s.reboot_after = strtoul(v, NULL, 10);
        else if (strcmp(a, "--seed") == 0) seed = strtoul(v, NULL, 10);
        else if (strcmp(a, "--max-payload") == 0) max_payload = strtoul(v, NULL, 10);
        else if (strcmp(a, "--max-message") == 0) max_message = strtoul(v, NULL, 10);
        else if (strcmp(a, "--record") == 0) record = v;
        else if (strcmp(a, "--id") == 0) id = v;
        else if (strcmp(a, "--firmware") == 0) firmware = v;
        else if (strcmp(a, "--refuse-containing") == 0) s.refuse = v;
        else if (strcmp(a, "--busy-containing") == 0) s.busy = v;
        else if (strcmp(a, "--payload") == 0 && strcmp(v, "envelope") == 0) s.envelope_only = 1;
        else if (strcmp(a, "--payload") == 0 && strcmp(v, "auto") == 0) s.envelope_only = 0;
        else {
            usage();
            return 2;
        }
    }
    if (max_payload < FB_MID_BYTES + 1u || max_payload > FB_MAX_PAYLOAD || max_message > MSG_CAP) {
        fprintf(stderr, "fbsim: --max-payload must be 5..%u, --max-message <= %u\n",
                FB_MAX_PAYLOAD, MSG_CAP);
        return 2;
    }
    s.rng = seed * 0x9E3779B97F4A7C15ULL + 1u;
    signal(SIGUSR1, on_usr1);
    signal(SIGPIPE, SIG_IGN);

    if (stdio) {
        s.in_fd = 0;
        s.out_fd = 1;
    } else if (device) {
        s.in_fd = s.out_fd = open(device, O_RDWR | O_NOCTTY);
        if (s.in_fd < 0) {
            perror(device);
            return 1;
        }
    } else {
        struct termios t;
        int master = posix_openpt(O_RDWR | O_NOCTTY);
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) {
            perror("posix_openpt");
            return 1;
        }
        /* Hold the slave open ourselves: with no slave open the master reads EIO, and the
         * host's unplug/replug then looks like a device that went away. */
        keep_slave = open(ptsname(master), O_RDWR | O_NOCTTY);
        if (keep_slave < 0 || tcgetattr(keep_slave, &t) < 0) {
            perror("pty slave");
            return 1;
        }
        cfmakeraw(&t);
        tcsetattr(keep_slave, TCSANOW, &t);
        s.in_fd = s.out_fd = master;
        printf("%s\n", ptsname(master));
        fflush(stdout);
    }
    if (device && isatty(s.in_fd)) {
        struct termios t;
        if (tcgetattr(s.in_fd, &t) == 0) {
            cfmakeraw(&t);
            tcsetattr(s.in_fd, TCSANOW, &t);
        }
    }
    if (record) {
        load_record(&s, record);
        s.record_fd = open(record, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (s.record_fd < 0) {
            perror(record);
            return 1;
        }
    }

    s.cfg.rx_buf = rx;
    s.cfg.rx_cap = FB_RX_BUF_FOR(max_payload); /* as small as a real device's */
    s.cfg.msg_buf = msg;
    s.cfg.msg_cap = max_message;
    s.cfg.max_payload = (uint8_t)max_payload;
    s.cfg.firmware = firmware;
    s.cfg.device_id = id;
    s.cfg.on_message = sim_message;
    s.cfg.write = sim_write;
    s.cfg.ctx = &s;
    if (fb_link_init(&s.link, &s.cfg) != 0) {
        fprintf(stderr, "fbsim: bad link configuration\n");
        return 2;
    }
    boot(&s);
    for (;;) {
        struct pollfd pfd = {s.in_fd, POLLIN, 0};
        ssize_t n;
        int rc = poll(&pfd, 1, 100);
        if (usr1) {
            usr1 = 0;
            s.reboots++;
            boot(&s);
        }
        if (rc <= 0)
            continue;
        n = read(s.in_fd, buf, sizeof buf);
        if (n == 0)
            break; /* stdin closed */
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            if (errno == EIO) { /* pty with no slave open: wait for the host */
                usleep(10000);
                continue;
            }
            perror("read");
            return 1;
        }
        feed(&s, buf, (size_t)n);
    }
    (void)keep_slave;
    return 0;
}
