/* clocks.c - what one clock read costs, for each clock the cached path could use. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double ns_per_read(clockid_t id, long n) {
  struct timespec a, b, t;
  long i;
  volatile long sink = 0;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (i = 0; i < n; i++) {
    clock_gettime(id, &t);
    sink += t.tv_nsec;
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  (void)sink;
  return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 10000000;
  struct { const char *name; clockid_t id; } clocks[] = {
      {"CLOCK_BOOTTIME", CLOCK_BOOTTIME}, {"CLOCK_MONOTONIC", CLOCK_MONOTONIC},
      {"CLOCK_MONOTONIC_COARSE", CLOCK_MONOTONIC_COARSE}, {"CLOCK_REALTIME", CLOCK_REALTIME}};
  size_t i;
  for (i = 0; i < sizeof clocks / sizeof clocks[0]; i++)
    printf("RESULT clock %s %.2f ns\n", clocks[i].name, ns_per_read(clocks[i].id, n));
  return 0;
}
