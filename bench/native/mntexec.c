/* bench-mntexec: start a command in the host tier's mount namespace (bench/kernel/mountns.py).
 *
 *   bench-mntexec PID COMMAND...
 *
 * joins the mount namespace of PID (the namespace's holder), takes the holder's root and "/" as
 * its working directory, and execs COMMAND (looked up in PATH inside): what
 * `nsenter --target PID --mount --root --wd` does, built static so that a start does not load
 * the shared libraries nsenter links (libselinux, libpcre2). It stays in its caller's session,
 * process group and cgroup. Exit status as chroot(8): 125 if it cannot enter, 126 if COMMAND
 * cannot run, 127 if it is not found. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char path[64];
    if (argc < 3 || argv[1][0] == '\0' || strspn(argv[1], "0123456789") != strlen(argv[1])
            || strlen(argv[1]) > 10) {
        fprintf(stderr, "usage: bench-mntexec PID COMMAND...\n");
        return 125;
    }
    snprintf(path, sizeof path, "/proc/%s/root", argv[1]);
    int root = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    snprintf(path, sizeof path, "/proc/%s/ns/mnt", argv[1]);
    int ns = open(path, O_RDONLY | O_CLOEXEC);
    if (root < 0 || ns < 0 || setns(ns, CLONE_NEWNS) != 0 || fchdir(root) != 0
            || chroot(".") != 0 || chdir("/") != 0) {
        fprintf(stderr, "bench-mntexec: entering the mount namespace of %s: %s\n", argv[1],
                strerror(errno));
        return 125;
    }
    close(root);
    close(ns);
    execvp(argv[2], argv + 2);
    fprintf(stderr, "bench-mntexec: failed to run command '%s': %s\n", argv[2], strerror(errno));
    return errno == ENOENT ? 127 : 126;
}
