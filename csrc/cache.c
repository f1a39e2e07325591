/* cache.c - the token cache entry and the clock its expiry is measured on.
 * Expiry uses CLOCK_BOOTTIME: it ignores wall-clock steps and keeps counting through suspend,
 * so a laptop that sleeps past expiry does not serve a dead token. CLOCK_MONOTONIC elsewhere. */
#define _GNU_SOURCE
#include <time.h>

#include "lusidauth.h"

#ifdef CLOCK_BOOTTIME
#define LA_CLOCK CLOCK_BOOTTIME
#else
#define LA_CLOCK CLOCK_MONOTONIC
#endif

int64_t la_now(void) {
  struct timespec ts;
  clock_gettime(LA_CLOCK, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int la_entry_state(const la_entry *e, int64_t now) {
  if (e->access.p == NULL) return LA_EMPTY;
  if (now >= e->expires_at) return LA_EXPIRED;
  if (now >= e->refresh_at) return LA_STALE;
  return LA_FRESH;
}

/* Stores a token obtained by a request sent at sent_at. The refresh window is
 * min(skew, lifetime / 2), so a short-lived token is not refreshed on every call. */
int la_entry_store(la_entry *e, const char *tok, size_t n, double expires_in, int64_t sent_at,
                   double skew) {
  double window = skew < expires_in / 2 ? skew : expires_in / 2;
  if (la_secret_set(&e->access, tok, n) != 0) return -1;
  e->expires_at = sent_at + (int64_t)(expires_in * 1e9);
  e->refresh_at = e->expires_at - (int64_t)(window * 1e9);
  e->retry_at = 0;
  e->failures = 0;
  e->gen++;
  return 0;
}

void la_entry_invalidate(la_entry *e) {
  la_secret_clear(&e->access);
  e->expires_at = e->refresh_at = e->retry_at = 0;
  e->failures = 0;
  e->gen++;
}

void la_entry_clear(la_entry *e) {
  la_entry_invalidate(e);
  la_secret_clear(&e->refresh);
}

double la_entry_seconds_left(const la_entry *e, int64_t now) {
  if (e->access.p == NULL || now >= e->expires_at) return 0;
  return (double)(e->expires_at - now) / 1e9;
}
