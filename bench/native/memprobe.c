/* bench-memprobe: memory copy bandwidth and dependent-load latency, printed as JSON.
 *
 *   bench-memprobe bandwidth SIZE_MB SECONDS   memcpy between two SIZE_MB buffers;
 *                                               MB/s = bytes copied (read once, written once) / s
 *   bench-memprobe latency   SIZE_MB SECONDS   pointer chase through a random cyclic permutation
 *                                               of 64-byte lines (Sattolo), ns per dependent load
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LINE 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint64_t next_random(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int bandwidth(size_t bytes, double seconds) {
    char *src = malloc(bytes), *dst = malloc(bytes);
    if (!src || !dst) { fprintf(stderr, "cannot allocate 2 x %zu bytes\n", bytes); return 2; }
    memset(src, 1, bytes);
    memset(dst, 2, bytes);
    memcpy(dst, src, bytes); /* warm the pages */
    double start = now(), elapsed;
    unsigned long copies = 0;
    do {
        memcpy(dst, src, bytes);
        src[copies % bytes] = (char)copies; /* keep the copy from being elided */
        copies++;
        elapsed = now() - start;
    } while (elapsed < seconds);
    double copied = (double)bytes * (double)copies;
    printf("{\"tool\": \"bench-memprobe\", \"mode\": \"bandwidth\", \"size_bytes\": %zu, "
           "\"copies\": %lu, \"seconds\": %.6f, \"mb_per_s\": %.3f, \"check\": %d}\n",
           bytes, copies, elapsed, copied / elapsed / 1e6, dst[bytes / 2]);
    free(src);
    free(dst);
    return 0;
}

static int latency(size_t bytes, double seconds) {
    size_t n = bytes / LINE;
    if (n < 2) { fprintf(stderr, "size too small\n"); return 2; }
    char *buf = aligned_alloc(LINE, n * LINE);
    size_t *order = malloc(n * sizeof *order);
    if (!buf || !order) { fprintf(stderr, "cannot allocate %zu bytes\n", bytes); return 2; }
    for (size_t i = 0; i < n; i++) order[i] = i;
    for (size_t i = n - 1; i > 0; i--) { /* Sattolo: one cycle through every line */
        size_t j = next_random() % i;
        size_t t = order[i]; order[i] = order[j]; order[j] = t;
    }
    for (size_t i = 0; i < n; i++)
        *(void **)(buf + order[i] * LINE) = buf + order[(i + 1) % n] * LINE;
    free(order);
    void **p = (void **)buf;
    for (size_t i = 0; i < n; i++) p = *p; /* one lap to fault the pages in */
    const unsigned long step = 1UL << 20;
    unsigned long loads = 0;
    double start = now(), elapsed;
    do {
        for (unsigned long i = 0; i < step; i++) p = *p;
        loads += step;
        elapsed = now() - start;
    } while (elapsed < seconds);
    printf("{\"tool\": \"bench-memprobe\", \"mode\": \"latency\", \"size_bytes\": %zu, "
           "\"loads\": %lu, \"seconds\": %.6f, \"ns_per_load\": %.4f, \"check\": %d}\n",
           n * LINE, loads, elapsed, elapsed * 1e9 / (double)loads, p != NULL);
    free(buf);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s bandwidth|latency SIZE_MB SECONDS\n", argv[0]);
        return 2;
    }
    size_t bytes = (size_t)strtoull(argv[2], NULL, 10) << 20;
    double seconds = strtod(argv[3], NULL);
    if (strcmp(argv[1], "bandwidth") == 0) return bandwidth(bytes, seconds);
    if (strcmp(argv[1], "latency") == 0) return latency(bytes, seconds);
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
