/* Every call the hvsock shim intercepts, from an ordinary C program.
 *
 *   vsock_calls server PORT
 *       listens (epoll on the listener, accept4 with flags), forks a child
 *       per connection that echoes through a dup of the descriptor.
 *   vsock_calls client PEER_CID PORT LOCAL_CID BAD_CID
 *       runs the checks below and prints "all ok".
 *
 * Built by crates/hvsock-preload/tests/c_program.rs with cc, run only under
 * `hvsock run`. Exits 1 at the first failed check, naming it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s (errno %d: %s)\n",      \
                    __FILE__, __LINE__, #cond, errno, strerror(errno));      \
            exit(1);                                                         \
        }                                                                    \
    } while (0)
#define FAILS_WITH(call, err) CHECK((call) == -1 && errno == (err))

static struct sockaddr_vm vm_addr(unsigned cid, unsigned port) {
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = cid;
    a.svm_port = port;
    return a;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        CHECK(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

static void read_exact(int fd, char *p, size_t n) {
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        CHECK(r > 0);
        p += r;
        n -= (size_t)r;
    }
}

/* Echo until end of stream, then send ours. */
static void echo(int fd) {
    char buf[65536];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        CHECK(r >= 0);
        if (r == 0)
            break;
        write_all(fd, buf, (size_t)r);
    }
    CHECK(shutdown(fd, SHUT_WR) == 0);
}

static int server(unsigned port) {
    int l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(l >= 0);
    CHECK(fcntl(l, F_GETFD) & FD_CLOEXEC);
    struct sockaddr_vm a = vm_addr(VMADDR_CID_ANY, port);
    FAILS_WITH(listen(l, 8), EINVAL); /* not bound yet */
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(l, 8) == 0);
    int v = 0;
    socklen_t len = sizeof v;
    CHECK(getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v == 1);
    struct sockaddr_vm got;
    len = sizeof got;
    CHECK(getsockname(l, (struct sockaddr *)&got, &len) == 0);
    CHECK(len == sizeof got && got.svm_port == port);
    FAILS_WITH(shutdown(l, SHUT_RDWR), ENOTCONN);
    signal(SIGCHLD, SIG_IGN);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) == 0);
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        struct epoll_event out;
        int n = epoll_wait(ep, &out, 1, -1);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n == 1 && out.data.fd == l);
        struct sockaddr_vm peer;
        len = sizeof peer;
        int c = accept4(l, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        CHECK(c >= 0);
        CHECK(len == sizeof peer && peer.svm_family == AF_VSOCK);
        CHECK(fcntl(c, F_GETFL) & O_NONBLOCK);
        CHECK(fcntl(c, F_GETFD) & FD_CLOEXEC);
        struct sockaddr_vm p2;
        len = sizeof p2;
        CHECK(getpeername(c, (struct sockaddr *)&p2, &len) == 0);
        CHECK(p2.svm_cid == peer.svm_cid && p2.svm_port == peer.svm_port);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            /* The child echoes through copies of the descriptor. */
            int off = 0;
            CHECK(ioctl(c, FIONBIO, &off) == 0);
            int d = dup(c);
            CHECK(d >= 0);
            int d2 = dup3(d, d + 10, O_CLOEXEC);
            CHECK(d2 == d + 10);
            CHECK(close(c) == 0 && close(d) == 0);
            len = sizeof p2;
            CHECK(getpeername(d2, (struct sockaddr *)&p2, &len) == 0);
            CHECK(p2.svm_port == peer.svm_port);
            echo(d2);
            _exit(0);
        }
        CHECK(close(c) == 0);
    }
}

static int connect_to(unsigned cid, unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    CHECK(s >= 0);
    struct sockaddr_vm a = vm_addr(cid, port);
    CHECK(connect(s, (struct sockaddr *)&a, sizeof a) == 0);
    return s;
}

static int client(unsigned peer, unsigned port, unsigned local_cid, unsigned bad_cid) {
    struct sockaddr_vm a = vm_addr(peer, port);
    socklen_t len;
    int v;

    /* Creation, types and refusals. */
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    CHECK(s >= 0);
    CHECK(!(fcntl(s, F_GETFD) & FD_CLOEXEC));
    len = sizeof v;
    CHECK(getsockopt(s, SOL_SOCKET, SO_TYPE, &v, &len) == 0 && v == SOCK_STREAM);
    CHECK(getsockopt(s, SOL_SOCKET, SO_DOMAIN, &v, &len) == 0 && v == AF_VSOCK);
    CHECK(getsockopt(s, SOL_SOCKET, SO_PROTOCOL, &v, &len) == 0 && v == 0);
    int sv[2];
    FAILS_WITH(socketpair(AF_VSOCK, SOCK_STREAM, 0, sv), EOPNOTSUPP);
    FAILS_WITH(socket(AF_VSOCK, SOCK_DGRAM, 0), ENODEV);
    FAILS_WITH(socket(AF_VSOCK, SOCK_STREAM, 99), EPROTONOSUPPORT);
    FAILS_WITH((int)syscall(SYS_socket, AF_VSOCK, SOCK_STREAM, 0), EAFNOSUPPORT); /* seccomp */
    int sp = socket(AF_VSOCK, SOCK_SEQPACKET, 0);
    CHECK(sp >= 0);
    FAILS_WITH(connect(sp, (struct sockaddr *)&a, sizeof a), ESOCKTNOSUPPORT);
    CHECK(close(sp) == 0);

    /* Options and ioctls. */
    unsigned cid = 0;
    CHECK(ioctl(s, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) == 0 && cid == local_cid);
    uint64_t size;
    len = sizeof size;
    CHECK(getsockopt(s, AF_VSOCK, SO_VM_SOCKETS_BUFFER_SIZE, &size, &len) == 0 && size == 262144);
    size = 32768;
    CHECK(setsockopt(s, AF_VSOCK, SO_VM_SOCKETS_BUFFER_SIZE, &size, sizeof size) == 0);
    size = 0;
    CHECK(getsockopt(s, AF_VSOCK, SO_VM_SOCKETS_BUFFER_SIZE, &size, &len) == 0 && size == 32768);
    CHECK(getsockopt(s, AF_VSOCK, SO_VM_SOCKETS_BUFFER_MIN_SIZE, &size, &len) == 0 && size == 128);
    CHECK(getsockopt(s, AF_VSOCK, SO_VM_SOCKETS_BUFFER_MAX_SIZE, &size, &len) == 0 && size == 262144);
    struct timeval tv = {.tv_sec = 4, .tv_usec = 250000};
    CHECK(setsockopt(s, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv) == 0);
    memset(&tv, 0, sizeof tv);
    len = sizeof tv;
    CHECK(getsockopt(s, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT_NEW, &tv, &len) == 0);
    CHECK(tv.tv_sec == 4 && tv.tv_usec == 250000);
    tv.tv_usec = 2000000;
    FAILS_WITH(setsockopt(s, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD, &tv, sizeof tv), EDOM);
    v = 1;
    FAILS_WITH(setsockopt(s, SOL_SOCKET, SO_ZEROCOPY, &v, sizeof v), EOPNOTSUPP);
    struct timeval rcv = {.tv_sec = 30};
    CHECK(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof rcv) == 0);

    /* Unconnected errors. */
    struct sockaddr_vm got;
    len = sizeof got;
    FAILS_WITH(getpeername(s, (struct sockaddr *)&got, &len), ENOTCONN);
    FAILS_WITH(shutdown(s, SHUT_WR), ENOTCONN);
    FAILS_WITH(accept(s, NULL, NULL), EINVAL);
    struct sockaddr_vm unbound = vm_addr(peer, port + 1);
    int r = socket(AF_VSOCK, SOCK_STREAM, 0);
    FAILS_WITH(connect(r, (struct sockaddr *)&unbound, sizeof unbound), ECONNREFUSED);
    struct sockaddr_vm bad = vm_addr(bad_cid, port);
    FAILS_WITH(connect(r, (struct sockaddr *)&bad, sizeof bad), peer == 2 ? ENETUNREACH : ENODEV);
    struct sockaddr_vm mine = vm_addr(VMADDR_CID_ANY, port + 2);
    CHECK(bind(r, (struct sockaddr *)&mine, sizeof mine) == 0);
    int r2 = socket(AF_VSOCK, SOCK_STREAM, 0);
    FAILS_WITH(bind(r2, (struct sockaddr *)&mine, sizeof mine), EADDRINUSE);
    struct sockaddr_vm other = vm_addr(local_cid + 1000, port + 3);
    FAILS_WITH(bind(r2, (struct sockaddr *)&other, sizeof other), EADDRNOTAVAIL);
    CHECK(close(r) == 0 && close(r2) == 0);

    /* Blocking connect; names. */
    CHECK(connect(s, (struct sockaddr *)&a, sizeof a) == 0);
    FAILS_WITH(connect(s, (struct sockaddr *)&a, sizeof a), EISCONN);
    len = sizeof got;
    CHECK(getpeername(s, (struct sockaddr *)&got, &len) == 0);
    CHECK(got.svm_cid == peer && got.svm_port == port);
    len = sizeof got;
    CHECK(getsockname(s, (struct sockaddr *)&got, &len) == 0 && got.svm_cid == local_cid);
    FAILS_WITH((int)send(s, "x", 1, MSG_ZEROCOPY), EOPNOTSUPP);
    FAILS_WITH((int)send(s, "x", 1, MSG_OOB), EOPNOTSUPP);

    /* Peek, SIOCINQ, SIOCOUTQ. */
    write_all(s, "peekaboo", 8);
    struct pollfd pfd = {.fd = s, .events = POLLIN};
    CHECK(poll(&pfd, 1, 30000) == 1);
    char buf[65536];
    CHECK(recv(s, buf, 4, MSG_PEEK | MSG_WAITALL) == 4 && memcmp(buf, "peek", 4) == 0);
    int inq = 0, outq = -1;
    CHECK(ioctl(s, SIOCINQ, &inq) == 0 && inq >= 4);
    CHECK(ioctl(s, SIOCOUTQ, &outq) == 0 && outq >= 0);
    read_exact(s, buf, 8);
    CHECK(memcmp(buf, "peekaboo", 8) == 0);

    /* dup and fcntl(F_DUPFD_CLOEXEC) copies name the same socket. */
    int d = fcntl(s, F_DUPFD_CLOEXEC, 100);
    CHECK(d >= 100);
    CHECK(close(s) == 0);
    len = sizeof got;
    CHECK(getpeername(d, (struct sockaddr *)&got, &len) == 0 && got.svm_port == port);
    int d2 = dup2(d, 200);
    CHECK(d2 == 200);
    CHECK(close(d) == 0);

    /* fork: the child writes on the inherited socket, the parent reads. */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        write_all(d2, "from the child", 14);
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    read_exact(d2, buf, 14);
    CHECK(memcmp(buf, "from the child", 14) == 0);

    /* Half-close: the peer echoes what is left and ends its stream. */
    write_all(d2, "bye", 3);
    CHECK(shutdown(d2, SHUT_WR) == 0);
    size_t total = 0;
    for (;;) {
        ssize_t n = read(d2, buf + total, sizeof buf - total);
        CHECK(n >= 0);
        if (n == 0)
            break;
        total += (size_t)n;
    }
    CHECK(total == 3 && memcmp(buf, "bye", 3) == 0);
    CHECK(close(d2) == 0);

    /* Non-blocking connect, then epoll moves 4 MiB both ways. */
    int nb = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK, 0);
    CHECK(nb >= 0);
    int rc = connect(nb, (struct sockaddr *)&a, sizeof a);
    CHECK(rc == 0 || errno == EINPROGRESS);
    if (rc != 0) {
        int again = connect(nb, (struct sockaddr *)&a, sizeof a);
        CHECK(again == 0 || errno == EALREADY || errno == EISCONN);
        struct pollfd w = {.fd = nb, .events = POLLOUT};
        CHECK(poll(&w, 1, 30000) == 1 && (w.revents & POLLOUT));
    }
    len = sizeof v;
    CHECK(getsockopt(nb, SOL_SOCKET, SO_ERROR, &v, &len) == 0 && v == 0);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = nb};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, nb, &ev) == 0);
    const size_t want = 4u << 20;
    size_t sent = 0, recvd = 0;
    unsigned char pattern = 0, expect = 0;
    int shut = 0;
    while (recvd < want) {
        struct epoll_event out;
        int n = epoll_wait(ep, &out, 1, 30000);
        CHECK(n == 1);
        if ((out.events & EPOLLOUT) && sent < want) {
            unsigned char chunk[16384];
            size_t k = want - sent < sizeof chunk ? want - sent : sizeof chunk;
            for (size_t i = 0; i < k; i++)
                chunk[i] = (unsigned char)(pattern + i);
            ssize_t w = write(nb, chunk, k);
            CHECK(w > 0 || errno == EAGAIN);
            if (w > 0) {
                pattern = (unsigned char)(pattern + w);
                sent += (size_t)w;
            }
        }
        if (sent == want && !shut) {
            CHECK(shutdown(nb, SHUT_WR) == 0);
            ev.events = EPOLLIN;
            CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, nb, &ev) == 0);
            shut = 1;
        }
        if (out.events & EPOLLIN) {
            ssize_t got_n = read(nb, buf, sizeof buf);
            CHECK(got_n > 0 || (got_n < 0 && errno == EAGAIN));
            for (ssize_t i = 0; i < got_n; i++) {
                CHECK((unsigned char)buf[i] == expect);
                expect++;
            }
            if (got_n > 0)
                recvd += (size_t)got_n;
        }
    }
    CHECK(close(ep) == 0 && close(nb) == 0);

    /* A non-blocking connect to nobody: POLLOUT, then SO_ERROR says why. */
    int nr = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK, 0);
    rc = connect(nr, (struct sockaddr *)&unbound, sizeof unbound);
    CHECK(rc == -1 && (errno == EINPROGRESS || errno == ECONNREFUSED));
    if (errno == EINPROGRESS) {
        struct pollfd w = {.fd = nr, .events = POLLOUT};
        CHECK(poll(&w, 1, 30000) == 1);
        len = sizeof v;
        CHECK(getsockopt(nr, SOL_SOCKET, SO_ERROR, &v, &len) == 0 && v == ECONNREFUSED);
    }
    CHECK(close(nr) == 0);

    /* Several connections at once, closed without reading. */
    int many[8];
    for (int i = 0; i < 8; i++) {
        many[i] = connect_to(peer, port);
        write_all(many[i], "x", 1);
    }
    for (int i = 0; i < 8; i++)
        CHECK(close(many[i]) == 0);

    printf("all ok\n");
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && strcmp(argv[1], "server") == 0)
        return server((unsigned)strtoul(argv[2], NULL, 0));
    if (argc == 6 && strcmp(argv[1], "client") == 0)
        return client((unsigned)strtoul(argv[2], NULL, 0), (unsigned)strtoul(argv[3], NULL, 0),
                      (unsigned)strtoul(argv[4], NULL, 0), (unsigned)strtoul(argv[5], NULL, 0));
    fprintf(stderr, "usage: vsock_calls server PORT | client PEER_CID PORT LOCAL_CID BAD_CID\n");
    return 2;
}
