/* bench-nsinit: the ns tier's container side, in C (bench/tiers/ns/runtime/native.py builds it on the host).
 *
 * bench posix_spawns it with a plan on its command line (bench/tiers/ns/runtime/native.py: plan_argv):
 *
 *   bench-nsinit REPORT GO STDOUT STDERR NETNS FLAGS HOSTNAME CAPMASK LOWER UPPER WORK MERGED SCRATCH
 *                NSTEPS (KIND PATH VALUE)... NJOIN PATH... [-- COMMAND...]
 *
 * REPORT/GO/STDOUT/STDERR are inherited descriptors (-1: none); NETNS, if not -1, is a network
 * namespace made and wired beforehand (the tier's pool) that PID 1 joins instead of making one. KIND is `m` (mkdir PATH) or
 * `w` (write VALUE to PATH). The process closes every other descriptor and starts a new
 * session. bench spawns it as PID 1 of a new PID namespace (it unshared CLONE_NEWPID for its
 * children first); started outside one, it unshares the PID namespace itself and forks PID 1,
 * then waits for it and exits with its status.
 * PID 1 reports each phase on REPORT as `name CLOCK_MONOTONIC-seconds` (see bench/tiers/ns/runtime/init.py,
 * the Python runtime it mirrors; `clone` carries the init's host PID too; a pooled network
 * namespace adds `network_ready` as it is joined), builds the container around itself, waits
 * for bench's `go` on GO, starts COMMAND and reaps. Lines are stamped as each phase ends and
 * sent when bench needs them: at `net` (bench wires a new namespace), `ready` (or, when go was
 * said before, once COMMAND is started), an error.
 *
 *   bench-nsinit --enter CAPMASK NAME=FD,... NJOIN PATH... -- COMMAND...
 *
 * runs COMMAND in a running container instead (bench's `exec`): join its cgroups (write 0 to
 * each PATH), setns into each namespace FD (inherited, in the order given), fork (only children
 * enter a PID namespace), drop capabilities to CAPMASK, exec; exit with COMMAND's status.
 * Spawned directly, so bench does not fork its own (large) process to get there.
 *
 *   bench-nsinit --pooled PLANFD FD...
 *
 * is spawned ahead (the tier's pool: a PID namespace with its PID 1 waiting) and reads the
 * first form's arguments from PLANFD, each ended by a NUL, when a start takes it; its
 * descriptors (FD..., up to five, kept: all others are closed) were given at the spawn. End of
 * file without a plan: it exits.
 *
 * Any form may start with `--seccomp FILE`: a classic BPF program (struct sock_filter[],
 * bench/kernel/seccomp.py writes it) read at once and loaded after the capabilities are cut
 * (no_new_privs set), so the command and all it starts run under it; PID 1 too, from `ready`. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXIT_SETUP_FAILED 125

static int report_fd = -1;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Phase lines are stamped when they happen but sent together (flush), so bench is woken once
 * per start rather than once per phase, while PID 1 still has work to do. */
static char pending[4096];
static size_t pending_len;

static void report_at(const char *name, double when, const char *extra) {
    int n = snprintf(pending + pending_len, sizeof pending - pending_len, "%s %.9f%s%s\n", name,
                     when, *extra ? " " : "", extra);
    if (n > 0 && (size_t)n < sizeof pending - pending_len) pending_len += (size_t)n;
}

static void report(const char *name) { report_at(name, now(), ""); }

static void flush(void) {
    size_t done = 0;
    while (done < pending_len) {
        ssize_t n = write(report_fd, pending + done, pending_len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        done += (size_t)n;
    }
    pending_len = 0;
}

static void fail(const char *fmt, ...) {
    char buf[1024];
    int err = errno;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *p = buf; *p; p++)
        if (*p == '\n') *p = ' ';
    flush();
    dprintf(report_fd, "error %s: %s\n", buf, strerror(err));
    _exit(EXIT_SETUP_FAILED);
}

static void write_file(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail("opening %s", path);
    if (write(fd, value, strlen(value)) < 0) fail("writing '%s' to %s", value, path);
    close(fd);
}

static void do_mount(const char *src, const char *target, const char *type, unsigned long flags,
                     const char *data) {
    if (mount(src, target, type, flags, data) != 0)
        fail("mount %s on %s (%s)", src, target, type ? type : "none");
}

/* Parts of /proc that reach the host's kernel are read-only, as Docker has them (its
 * readonlyPaths): sysctls outside the container's own network namespace, the sysrq trigger,
 * bus, fs and irq. /proc/sys/net stays writable: those sysctls belong to the container's netns. */
static void protect_proc(const char *merged) {
    static const char *const readonly[] = {"sys", "sysrq-trigger", "bus", "fs", "irq"};
    char path[4200];
    for (size_t i = 0; i < sizeof readonly / sizeof *readonly; i++) {
        snprintf(path, sizeof path, "%s/proc/%s", merged, readonly[i]);
        if (access(path, F_OK) != 0) continue;  /* not in this kernel */
        do_mount(path, path, NULL, MS_BIND | MS_REC, NULL);
        do_mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
                 | MS_NOEXEC, NULL);
    }
    snprintf(path, sizeof path, "%s/proc/sys/net", merged);
    do_mount(path, path, NULL, MS_BIND, NULL);
    do_mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

static void make_dev(const char *merged) {
    static const struct { const char *name; unsigned major, minor; } devices[] = {
        {"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8},
        {"urandom", 1, 9}, {"tty", 5, 0}};
    static const char *links[][2] = {
        {"fd", "/proc/self/fd"}, {"stdin", "/proc/self/fd/0"}, {"stdout", "/proc/self/fd/1"},
        {"stderr", "/proc/self/fd/2"}, {"ptmx", "pts/ptmx"}};
    char dev[4096], path[4200];
    snprintf(dev, sizeof dev, "%s/dev", merged);
    do_mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k");
    mode_t old = umask(0);
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dev, devices[i].name);
        if (mknod(path, S_IFCHR | 0666, makedev(devices[i].major, devices[i].minor)) != 0)
            fail("mknod %s", path);
    }
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dev, links[i][0]);
        if (symlink(links[i][1], path) != 0) fail("symlink %s", path);
    }
    snprintf(path, sizeof path, "%s/pts", dev);
    if (mkdir(path, 0755) != 0) fail("mkdir %s", path);
    do_mount("devpts", path, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620");
    snprintf(path, sizeof path, "%s/shm", dev);
    if (mkdir(path, 01777) != 0) fail("mkdir %s", path);
    umask(old);
    do_mount("shm", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k");
}

static void make_root(const char *lower, const char *upper, const char *work, const char *merged,
                      const char *scratch) {
    char options[12288], path[4200];
    do_mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL);
    snprintf(options, sizeof options, "lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work);
    do_mount("overlay", merged, "overlay", 0, options);
    if (*scratch) {
        snprintf(path, sizeof path, "%s/scratch", merged);
        do_mount(scratch, path, NULL, MS_BIND | MS_REC, NULL);
    }
    snprintf(path, sizeof path, "%s/proc", merged);
    do_mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    protect_proc(merged);
    snprintf(path, sizeof path, "%s/sys", merged);
    do_mount("sysfs", path, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    make_dev(merged);
    if (chdir(merged) != 0) fail("chdir %s", merged);
    if (syscall(SYS_pivot_root, ".", ".") != 0) fail("pivot_root");
    if (umount2(".", MNT_DETACH) != 0) fail("umount old root");
    if (chdir("/") != 0) fail("chdir /");
}

static int last_cap(void) {
    char buf[16] = {0};
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 40;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? atoi(buf) : 40;
}

static void cut_capabilities(unsigned long long keep, int last) {
    for (int cap = 0; cap <= last; cap++)
        if (!(keep & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
            fail("dropping capability %d from the bounding set", cap);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) fail("clearing ambient");
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    for (int i = 0; i < 2; i++)
        data[i].effective = data[i].permitted = data[i].inheritable =
            (unsigned)(keep >> (32 * i));
    if (syscall(SYS_capset, &header, data) != 0) fail("capset");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("no_new_privs");
}

static struct sock_fprog filter;  /* len 0: no seccomp filter */

static void read_filter(const char *path) {
    static struct sock_filter program[BPF_MAXINSNS];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("opening the seccomp filter %s", path);
    size_t have = 0;
    ssize_t n;
    while ((n = read(fd, (char *)program + have, sizeof program - have)) > 0) have += (size_t)n;
    close(fd);
    if (n < 0 || have == 0 || have % sizeof *program != 0 || have == sizeof program)
        fail("reading the seccomp filter %s (%zu bytes)", path, have);
    filter.len = (unsigned short)(have / sizeof *program);
    filter.filter = program;
}

static void load_filter(void) {
    if (filter.len && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &filter, 0, 0) != 0)
        fail("loading the seccomp filter");
}

static void close_others(const int *keep, int n) {
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return;
    int self = dirfd(dir);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        int fd = atoi(entry->d_name);
        if (entry->d_name[0] == '.' || fd < 3 || fd == self) continue;
        int kept = 0;
        for (int i = 0; i < n; i++) kept |= keep[i] == fd;
        if (!kept) close(fd);
    }
    closedir(dir);
}

static void reap_forever(pid_t command) {
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    for (;;) {
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            if (pid != command) continue;
            int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            dprintf(report_fd, "exit %.9f %d\n", now(), code);
            _exit(code);
        }
        siginfo_t info;
        sigwaitinfo(&chld, &info);
    }
}

static int enter(int argc, char **argv) {
    report_fd = 2;  /* errors go to stderr: bench reports them with the command's */
    if (argc < 6) return 2;
    unsigned long long keep = strtoull(argv[2], NULL, 0);
    char *spec = argv[3];
    int at = 4, njoin = atoi(argv[at++]);
    if (njoin < 0 || at + njoin >= argc) return 2;
    for (int i = 0; i < njoin; i++) write_file(argv[at + i], "0");
    at += njoin;
    if (strcmp(argv[at], "--") != 0 || at + 1 >= argc) return 2;
    char **command = argv + at + 1;
    for (char *item = strtok(spec, ","); item; item = strtok(NULL, ",")) {
        char *eq = strchr(item, '=');
        if (!eq) return 2;
        *eq = 0;
        int fd = atoi(eq + 1);
        if (setns(fd, 0) != 0) fail("setns %s", item);
        close(fd);
    }
    pid_t pid = fork();
    if (pid < 0) fail("fork");
    if (pid == 0) {
        if (chdir("/") != 0) fail("chdir /");
        cut_capabilities(keep, last_cap());
        load_filter();
        execvp(command[0], command);
        dprintf(2, "cannot run %s: %s\n", command[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv) {
    const char *filter_path = NULL;
    if (argc > 2 && strcmp(argv[1], "--seccomp") == 0) {
        filter_path = argv[2];
        argv[2] = argv[0];
        argv += 2;
        argc -= 2;
    }
    if (argc > 1 && strcmp(argv[1], "--enter") == 0) {
        report_fd = 2;  /* as in enter() */
        if (filter_path) read_filter(filter_path);
        return enter(argc, argv);
    }
    if (argc > 2 && strcmp(argv[1], "--pooled") == 0) {
        /* spawned ahead into its PID namespace, before any start asks for it: wait for the
         * plan (the usual arguments, each NUL-ended, then end of file) on PLANFD */
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        int plan_fd = atoi(argv[2]), kept[6] = {plan_fd, -1, -1, -1, -1, -1};
        for (int i = 3; i < argc && i < 8; i++) kept[i - 2] = atoi(argv[i]);
        close_others(kept, 6);  /* what another thread's spawn let slip in is not held */
        if (filter_path) read_filter(filter_path);
        static char plan[65536];
        static char *planned[4096];
        size_t have = 0;
        ssize_t n;
        while ((n = read(plan_fd, plan + have, sizeof plan - 1 - have)) > 0 ||
               (n < 0 && errno == EINTR))
            if (n > 0) have += (size_t)n;
        close(plan_fd);
        if (have == 0 || plan[have - 1] != 0) _exit(EXIT_SETUP_FAILED);  /* not wanted */
        argc = 0;
        planned[argc++] = argv[0];
        for (size_t at = 0; at < have && argc < 4095; at += strlen(plan + at) + 1)
            planned[argc++] = plan + at;
        planned[argc] = NULL;
        argv = planned;
    }
    double clone_time = now();  /* pooled: when the plan came */
    int spawned_as_init = getpid() == 1;  /* bench spawned us into a new PID namespace */
    if (argc < 16) {
        fprintf(stderr, "bench-nsinit: a plan from bench/tiers/ns/runtime/native.py expected\n");
        return 2;
    }
    report_fd = atoi(argv[1]);
    if (filter_path && !filter.len) read_filter(filter_path);  /* a host path: before pivot */
    int go_fd = atoi(argv[2]), out_fd = atoi(argv[3]), err_fd = atoi(argv[4]);
    int netns_fd = atoi(argv[5]);
    int flags = (int)strtol(argv[6], NULL, 0);
    const char *hostname = argv[7];
    unsigned long long keep = strtoull(argv[8], NULL, 0);
    const char *lower = argv[9], *upper = argv[10], *work = argv[11], *merged = argv[12];
    const char *scratch = argv[13];
    int at = 14, nsteps = atoi(argv[at++]);
    char **steps = argv + at;
    at += 3 * nsteps;
    if (at >= argc) return 2;
    int njoin = atoi(argv[at++]);
    char **joins = argv + at;
    at += njoin;
    char **command = NULL;
    if (at < argc && strcmp(argv[at], "--") == 0 && at + 1 < argc) command = argv + at + 1;

    int keep_fds[5] = {report_fd, go_fd, out_fd, err_fd, netns_fd};
    close_others(keep_fds, 5);
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0), dup2(null, 1), dup2(null, 2);
        if (null > 2) close(null);
    }
    for (int i = 0; i < 5; i++)
        if (keep_fds[i] >= 0) fcntl(keep_fds[i], F_SETFD, FD_CLOEXEC);
    setsid();
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);  /* die with bench */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    if (!spawned_as_init) {  /* make the PID namespace ourselves; PID 1 is our child */
        if (getppid() == 1) return EXIT_SETUP_FAILED;  /* bench is gone already */
        if (unshare(CLONE_NEWPID) != 0) fail("unshare(CLONE_NEWPID)");
        pid_t init = fork();
        if (init < 0) fail("fork");
        if (init > 0) {  /* the outer process: wait for PID 1, end as it ended */
            for (int i = 0; i < 5; i++)
                if (keep_fds[i] >= 0) close(keep_fds[i]);
            int status;
            while (waitpid(init, &status, 0) < 0 && errno == EINTR) {}
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        clone_time = now();
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    }

    /* PID 1 */
    char self[64] = {0};
    if (readlink("/proc/self", self, sizeof self - 1) < 0) fail("readlink /proc/self");
    report_at("clone", clone_time, self);
    signal(SIGPIPE, SIG_DFL);
    if (netns_fd >= 0) {  /* made and wired beforehand: joined, not made */
        if (setns(netns_fd, CLONE_NEWNET) != 0) fail("setns(network namespace)");
        close(netns_fd);
        report("net");
        report("network_ready");  /* it was wired to the bridge when it was made */
    } else if (flags & CLONE_NEWNET) {
        if (unshare(CLONE_NEWNET) != 0) fail("unshare(CLONE_NEWNET)");
        report("net");
        flush();  /* bench wires the veth in while we go on */
    }
    for (int i = 0; i < nsteps; i++) {
        const char *kind = steps[3 * i], *path = steps[3 * i + 1], *value = steps[3 * i + 2];
        if (kind[0] == 'm') {
            if (mkdir(path, 0755) != 0 && errno != EEXIST) fail("mkdir %s", path);
        } else {
            write_file(path, value);
        }
    }
    for (int i = 0; i < njoin; i++) write_file(joins[i], "0");
    report("cgroup_joined");
    if (unshare(flags & ~CLONE_NEWNET) != 0) fail("unshare(%#x)", flags & ~CLONE_NEWNET);
    if (sethostname(hostname, strlen(hostname)) != 0) fail("sethostname");
    report("namespaces_ready");
    make_root(lower, upper, work, merged, scratch);
    report("root_mounted");
    cut_capabilities(keep, last_cap());
    load_filter();
    report("ready");
    /* go said already (nothing was wired in, no warm start): bench is not waiting for `ready`,
     * so the lines go after the command is started, not while it starts (bench woken then
     * would take a core from it, on a busy host) */
    struct pollfd said = {go_fd, POLLIN, 0};
    int early = poll(&said, 1, 0) == 1;
    if (!early) flush();
    char go[16] = {0};
    if (read(go_fd, go, sizeof go) != 2 || memcmp(go, "go", 2) != 0) _exit(EXIT_SETUP_FAILED);
    close(go_fd);
    pid_t pid = 0;
    if (command) {  /* posix_spawn: vfork + exec, with an empty signal mask */
        posix_spawn_file_actions_t actions;
        posix_spawnattr_t attr;
        sigset_t none;
        sigemptyset(&none);
        posix_spawn_file_actions_init(&actions);
        if (out_fd >= 0) posix_spawn_file_actions_adddup2(&actions, out_fd, 1);
        if (err_fd >= 0) posix_spawn_file_actions_adddup2(&actions, err_fd, 2);
        posix_spawnattr_init(&attr);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
        extern char **environ;
        int rc = posix_spawnp(&pid, command[0], &actions, &attr, command, environ);
        if (rc != 0) {
            flush();
            dprintf(err_fd >= 0 ? err_fd : 2, "cannot run %s: %s\n", command[0], strerror(rc));
            dprintf(report_fd, "exit %.9f 127\n", now());
            _exit(127);
        }
    }
    flush();  /* `ready` and the rest, if held back above */
    if (out_fd >= 0) close(out_fd);
    if (err_fd >= 0) close(err_fd);
    reap_forever(pid);
}
