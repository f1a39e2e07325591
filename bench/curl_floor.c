/* curl_floor.c - the round-trip floor: the refresh-grant POST with HTTP Basic auth, sent N times
 * through ONE reused libcurl easy handle (so one kept-alive connection), each request timed.
 * The body is collected but not parsed.
 *
 *   curl_floor URL N CLIENT_ID CLIENT_SECRET
 * Prints "RESULT roundtrip libcurl <median us> us"; exits 1 on any failed request. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

struct buf {
  char data[65536];
  size_t len;
};

static size_t collect(char *p, size_t size, size_t n, void *ud) {
  struct buf *b = ud;
  size_t len = size * n;
  if (b->len + len >= sizeof b->data) return 0; /* too big: fail the transfer */
  memcpy(b->data + b->len, p, len);
  b->len += len;
  b->data[b->len] = '\0';
  return len;
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  static struct buf body;
  const char *form = "grant_type=refresh_token&refresh_token=rt.x";
  double *us;
  long n, i, status = 0;
  CURL *h;
  if (argc != 5 || (n = atol(argv[2])) < 1) {
    fprintf(stderr, "usage: curl_floor URL N CLIENT_ID CLIENT_SECRET\n");
    return 2;
  }
  us = calloc((size_t)n, sizeof *us);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  h = curl_easy_init();
  if (us == NULL || h == NULL) return 2;
  curl_easy_setopt(h, CURLOPT_URL, argv[1]);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
  curl_easy_setopt(h, CURLOPT_USERNAME, argv[3]);
  curl_easy_setopt(h, CURLOPT_PASSWORD, argv[4]);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, form);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  for (i = 0; i < n; i++) {
    double t0 = now_us();
    CURLcode rc;
    body.len = 0;
    rc = curl_easy_perform(h);
    us[i] = now_us() - t0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK || status != 200) {
      fprintf(stderr, "curl_floor: request %ld: %s, HTTP %ld\n", i, curl_easy_strerror(rc), status);
      return 1;
    }
    if (i == 0 && strstr(body.data, "\"access_token\"") == NULL) {
      fprintf(stderr, "curl_floor: no access_token in %s\n", body.data);
      return 1;
    }
  }
  qsort(us, (size_t)n, sizeof *us, cmp);
  printf("RESULT roundtrip libcurl %.2f us\n", us[n / 2]);
  curl_easy_cleanup(h);
  curl_global_cleanup();
  free(us);
  return 0;
}
