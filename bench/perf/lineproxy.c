/* websocketd's per-connection program in the benchmark: stdin/stdout <-> a TCP device.
 *
 *   lineproxy HOST PORT
 *
 * websocketd writes each WebSocket message to our stdin as a line and sends each line we
 * print as a message. We copy bytes both ways as they come (no buffering beyond one read),
 * with poll(2), and exit when either side closes. Built by bench/perf/run.py with
 * gcc -O2 -o lineproxy lineproxy.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int write_all(int fd, const char *p, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, (size_t)n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= w;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    signal(SIGPIPE, SIG_IGN);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) return 1;
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    static char buf[65536];
    struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = s, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) { if (errno == EINTR) continue; return 1; }
        if (p[0].revents) {
            ssize_t r = read(0, buf, sizeof buf);
            if (r <= 0 || write_all(s, buf, r) < 0) return 0;
        }
        if (p[1].revents) {
            ssize_t r = read(s, buf, sizeof buf);
            if (r <= 0 || write_all(1, buf, r) < 0) return 0;
        }
    }
}
