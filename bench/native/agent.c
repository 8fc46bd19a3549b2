/* bench-agent: the docker tier's exec path, run as the container's own process.
 *
 *   bench-agent SOCKET
 *
 * Docker starts it as the container's command (under docker-init), so it holds everything the
 * engine gives a container's process: namespaces, cgroup, capability bounding set, seccomp
 * filter, no_new_privs, LSM label, user, environment and working directory. Each command is
 * forked from it and inherits all of that, as `docker exec` would give it, without the
 * engine's exec round trip (containerd, a new runc). bench/tiers/docker/agent.py is the host
 * side; the protocol on SOCKET (a unix stream socket, one connection per command):
 *
 *   host -> agent  a 4-byte length N (native order) carrying SCM_RIGHTS [stdout, stderr],
 *                  then N bytes: the argv, each string NUL-terminated (N = 0, no fds: a ping,
 *                  answered "ready\n")
 *   agent -> host  "exit S\n" or "signal S\n" once the command is reaped
 *   host -> agent  any byte: SIGKILL to the command's process group (a timeout); the host
 *                  closing the connection before the status does the same (bench went away)
 *
 * The command gets a session (and process group) of its own, as runc gives an exec, stdin
 * /dev/null, and is execvp'd: argv never passes through a shell. If the socket cannot be made
 * the agent only waits, as `sleep infinity` would, and bench falls back to `docker exec`. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_SESSIONS 256
#define MAX_REQUEST (1 << 20)

struct session {
    int fd;       /* the host's connection, -1 once closed */
    pid_t pid;    /* the command, 0 once reaped */
    pid_t group;  /* its process group (its pid), which may outlive it */
};

static struct session sessions[MAX_SESSIONS];
static int nsessions;

static void drop(int i) {
    if (sessions[i].fd >= 0)
        close(sessions[i].fd);
    sessions[i] = sessions[--nsessions];
}

static int read_full(int fd, char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

static void run_child(char **argv, int out, int err, sigset_t *mask) {
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    sigprocmask(SIG_UNBLOCK, mask, NULL);
    if (setsid() < 0 || null < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(125);
    execvp(argv[0], argv);
    dprintf(2, "bench-agent: cannot run '%s': %s\n", argv[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
}

/* Read one request from a new connection and start its command (or answer a ping). */
static void serve(int conn, sigset_t *mask) {
    uint32_t len = 0;
    int fds[2] = {-1, -1}, nfds = 0;
    char control[CMSG_SPACE(sizeof(int) * 4)];
    struct iovec iov = {&len, sizeof len};
    struct msghdr msg = {0};
    struct timeval limit = {2, 0};  /* bench sends a request at once: never hang on one */
    char *buf = NULL, **argv = NULL;
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *got = (int *)CMSG_DATA(c);
        for (int k = 0; k < count; k++) {
            if (nfds < 2)
                fds[nfds++] = got[k];
            else
                close(got[k]);
        }
    }
    if (n != (ssize_t)sizeof len || len > MAX_REQUEST)
        goto refuse;
    if (len == 0) {
        if (nfds == 0)
            send(conn, "ready\n", 6, MSG_NOSIGNAL);
        goto refuse;
    }
    if (nfds != 2 || nsessions == MAX_SESSIONS || (buf = malloc(len)) == NULL
            || read_full(conn, buf, len) != 0 || buf[len - 1] != '\0' || buf[0] == '\0')
        goto refuse;
    size_t argc = 0;
    for (uint32_t k = 0; k < len; k++)
        argc += buf[k] == '\0';
    if ((argv = calloc(argc + 1, sizeof *argv)) == NULL)
        goto refuse;
    for (size_t k = 0, at = 0; k < argc; k++) {
        argv[k] = buf + at;
        at += strlen(buf + at) + 1;
    }
    pid_t pid = fork();
    if (pid == 0)
        run_child(argv, fds[0], fds[1], mask);
    if (pid < 0) {
        dprintf(fds[1], "bench-agent: fork: %s\n", strerror(errno));
        send(conn, "exit 125\n", 9, MSG_NOSIGNAL);
        goto refuse;
    }
    close(fds[0]);
    close(fds[1]);
    free(argv);
    free(buf);
    sessions[nsessions++] = (struct session){conn, pid, pid};
    return;
refuse:
    for (int k = 0; k < nfds; k++)
        close(fds[k]);
    free(argv);
    free(buf);
    close(conn);
}

static void reap(void) {
    int status;
    pid_t pid;
    char line[32];
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < nsessions; i++) {
            if (sessions[i].pid != pid)
                continue;
            sessions[i].pid = 0;
            if (sessions[i].fd < 0) {
                drop(i);
                break;
            }
            int len = WIFSIGNALED(status)
                ? snprintf(line, sizeof line, "signal %d\n", WTERMSIG(status))
                : snprintf(line, sizeof line, "exit %d\n", WEXITSTATUS(status));
            send(sessions[i].fd, line, (size_t)len, MSG_NOSIGNAL);
            break;
        }
    }
}

/* The host wrote (a kill request: a timeout) or hung up. */
static void from_host(int i) {
    char byte;
    ssize_t n = recv(sessions[i].fd, &byte, 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    pid_t pid = sessions[i].pid;
    if (n > 0 || pid > 0) {  /* a kill request, or bench gone while the command runs */
        kill(-sessions[i].group, SIGKILL);
        if (pid > 0)
            kill(pid, SIGKILL);  /* before its setsid it is in the agent's group */
    }
    if (n > 0 && pid > 0)
        return;  /* the status follows once it is reaped */
    close(sessions[i].fd);
    sessions[i].fd = -1;
    if (pid == 0)
        drop(i);
}

static void idle(void) {
    for (;;)
        pause();
}

int main(int argc, char **argv) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (argc != 2 || strlen(argv[1]) >= sizeof addr.sun_path) {
        fprintf(stderr, "usage: bench-agent SOCKET\n");
        idle();
    }
    strcpy(addr.sun_path, argv[1]);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    int sig = -1, lsock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unlink(argv[1]);
    mode_t umasked = umask(077);  /* the socket: root's only; the commands get the old umask */
    if (lsock < 0 || bind(lsock, (struct sockaddr *)&addr, sizeof addr) != 0
            || listen(lsock, 64) != 0 || sigprocmask(SIG_BLOCK, &mask, NULL) != 0
            || (sig = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
        fprintf(stderr, "bench-agent: cannot serve on %s: %s\n", argv[1], strerror(errno));
        idle();
    }
    umask(umasked);
    struct pollfd fds[MAX_SESSIONS + 2];
    int index[MAX_SESSIONS + 2];
    for (;;) {
        int n = 0;
        fds[n++] = (struct pollfd){.fd = lsock, .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = sig, .events = POLLIN};
        for (int i = 0; i < nsessions; i++) {
            if (sessions[i].fd < 0)
                continue;
            index[n] = i;
            fds[n++] = (struct pollfd){.fd = sessions[i].fd, .events = POLLIN};
        }
        if (poll(fds, (nfds_t)n, -1) < 0)
            continue;
        /* back to front: from_host may drop a session (the last one moves into its place) */
        for (int k = n - 1; k >= 2; k--) {
            if (fds[k].revents)
                from_host(index[k]);
        }
        if (fds[1].revents) {
            struct signalfd_siginfo info;
            while (read(sig, &info, sizeof info) > 0) {
            }
            reap();
        }
        if (fds[0].revents & POLLIN) {
            int conn = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
            if (conn >= 0)
                serve(conn, &mask);
        }
    }
}
