/* The benchmark's device: a TCP line-echo and burst device on 127.0.0.1.
 *
 *   device PORT        (0: pick one; the port is printed as "PORT n")
 *
 * Every line received is sent back as it came (a line echo). "GO N" is answered with N
 * numbered lines "t=<i> v=<i*7 mod 100000>.<i mod 100>", as fast as the socket takes them.
 * One thread, epoll, non-blocking sockets, any number of connections (each gets its own
 * echo and its own burst): it is never the bottleneck. It exits on SIGTERM or when its
 * parent (the benchmark) goes away (stdin reaches EOF).
 *
 * Built by bench/perf/run.py with: gcc -O2 -o device device.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_LINE 8192      /* a longer run without a line end is echoed as it is */
#define BURST_CHUNK 65536  /* burst lines generated per refill */

struct conn {
    int fd;
    char in[MAX_LINE];
    size_t in_len;
    char *out;             /* bytes waiting to be written */
    size_t out_len, out_off, out_cap;
    long burst_next, burst_end;  /* lines burst_next..burst_end-1 still to send */
    int want_out;
};

static void out_reserve(struct conn *c, size_t more) {
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + more <= c->out_cap) return;
    if (c->out_off) {  /* compact first */
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_len + more <= c->out_cap) return;
    }
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + more) cap *= 2;
    c->out = realloc(c->out, cap);
    if (!c->out) { perror("realloc"); exit(1); }
    c->out_cap = cap;
}

static void out_put(struct conn *c, const char *p, size_t n) {
    out_reserve(c, n);
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static char *put_uint(char *p, unsigned long v) {
    char tmp[24];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

static void burst_refill(struct conn *c) {
    if (c->burst_next >= c->burst_end) return;
    out_reserve(c, BURST_CHUNK + 64);
    char *start = c->out + c->out_len, *p = start;
    while (c->burst_next < c->burst_end && (size_t)(p - start) < BURST_CHUNK) {
        unsigned long i = (unsigned long)c->burst_next++;
        memcpy(p, "t=", 2); p += 2;
        p = put_uint(p, i);
        memcpy(p, " v=", 3); p += 3;
        p = put_uint(p, (i * 7) % 100000);
        *p++ = '.';
        unsigned long f = i % 100;
        *p++ = (char)('0' + f / 10); *p++ = (char)('0' + f % 10);
        *p++ = '\n';
    }
    c->out_len += (size_t)(p - start);
}

static void on_line(struct conn *c, const char *line, size_t n, const char *end, size_t endn) {
    if (n > 3 && memcmp(line, "GO ", 3) == 0) {
        long count = strtol(line + 3, NULL, 10);
        if (count > 0) {
            if (c->burst_next >= c->burst_end) c->burst_next = c->burst_end = 1;
            c->burst_end += count;
            return;
        }
    }
    out_put(c, line, n);
    out_put(c, end, endn);
}

static void set_events(int ep, struct conn *c, int want_out) {
    if (want_out == c->want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

/* Write what is pending, refilling bursts; returns -1 when the peer is gone. */
static int flush_out(int ep, struct conn *c) {
    for (;;) {
        if (c->out_off == c->out_len) burst_refill(c);
        if (c->out_off == c->out_len) { set_events(ep, c, 0); return 0; }
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) { set_events(ep, c, 1); return 0; }
            if (errno == EINTR) continue;
            return -1;
        }
        c->out_off += (size_t)w;
    }
}

static int on_readable(struct conn *c) {
    char buf[65536];
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof buf, 0);
        if (r == 0) return -1;
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        for (ssize_t i = 0; i < r;) {
            char *nl = memchr(buf + i, '\n', (size_t)(r - i));
            size_t take = nl ? (size_t)(nl - (buf + i)) : (size_t)(r - i);
            if (c->in_len + take > MAX_LINE) {  /* overlong: echo what we hold */
                out_put(c, c->in, c->in_len);
                c->in_len = 0;
                if (take > MAX_LINE) { out_put(c, buf + i, take); i += (ssize_t)take; continue; }
            }
            memcpy(c->in + c->in_len, buf + i, take);
            c->in_len += take;
            i += (ssize_t)take;
            if (nl) {
                size_t n = c->in_len;
                int cr = n && c->in[n - 1] == '\r';
                on_line(c, c->in, n - (size_t)cr, cr ? "\r\n" : "\n", cr ? 2 : 1);
                c->in_len = 0;
                i += 1;
            }
        }
        if ((size_t)r < sizeof buf) return 0;
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) { perror("listen"); return 1; }
    socklen_t al = sizeof a;
    getsockname(ls, (struct sockaddr *)&a, &al);
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    static char stdin_tag;
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &stdin_tag};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);  /* EOF on stdin: the benchmark is gone */
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
        for (int k = 0; k < n; k++) {
            if (evs[k].data.ptr == &stdin_tag) {
                char b[256];
                if (read(0, b, sizeof b) <= 0) return 0;
                continue;
            }
            if (evs[k].data.ptr == NULL) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            struct conn *c = evs[k].data.ptr;
            int gone = 0;
            if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) gone = on_readable(c) < 0;
            if (!gone) gone = flush_out(ep, c) < 0;
            if (gone) drop(ep, c);
        }
    }
}
