/* bench-stamp: the no-op workload. Its first act is to read CLOCK_MONOTONIC, so the
 * time it prints is the workload's first instruction as seen from the host's clock
 * (containers share that clock; a VM does not and reports it relative to its own). */
#include <stdio.h>
#include <time.h>

int main(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    printf("{\"tool\": \"bench-stamp\", \"monotonic_ns\": %lld}\n",
           (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    return 0;
}
