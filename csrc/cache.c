/* cache.c - the token cache entry and the clock its expiry is measured on.
 * Expiry uses CLOCK_BOOTTIME: it ignores wall-clock steps and keeps counting through suspend,
 * so a laptop that sleeps past expiry does not serve a dead token. CLOCK_MONOTONIC elsewhere. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lusidauth.h"

#ifndef LA_CLOCK /* overridable only to measure the alternatives (bench/) */
#ifdef CLOCK_BOOTTIME
#define LA_CLOCK CLOCK_BOOTTIME
#else
#define LA_CLOCK CLOCK_MONOTONIC
#endif
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
  if (e->access.p != NULL) e->dropped = la_token_hash(e->access.p, e->access.n);
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

/* ---- the process-wide registry: clients of one identity share one entry ----
 * Any Lua state on any thread may hold a client, so the registry and each entry have a mutex.
 * No lock is ever held during network I/O or a Lua call. */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static la_shared *registry = NULL;

static uint64_t fnv(uint64_t h, const char *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
  return (h ^ 0xff) * 1099511628211ULL; /* separates fields: ("ab","c") != ("a","bc") */
}

static size_t slen(const char *s) { return s != NULL ? strlen(s) : 0; }

uint64_t la_token_hash(const char *p, size_t n) { return fnv(14695981039346656037ULL, p, n); }

static uint64_t identity_hash(const la_creds *c, const la_secret *start, const char *tag) {
  uint64_t h = fnv(14695981039346656037ULL, tag, slen(tag));
  char g = (char)('0' + c->grant);
  h = fnv(h, &g, 1);
  h = fnv(h, c->token_url, slen(c->token_url));
  h = fnv(h, c->client_id, slen(c->client_id));
  h = fnv(h, c->username, slen(c->username));
  h = fnv(h, c->scope, slen(c->scope));
  h = fnv(h, c->client_secret.p, c->client_secret.n);
  h = fnv(h, c->password.p, c->password.n);
  return fnv(h, start->p, start->n);
}

static int str_eq(const char *a, const char *b) {
  return (a == NULL || b == NULL) ? a == b : strcmp(a, b) == 0;
}

static int secret_eq(const la_secret *a, const la_secret *b) {
  if (a->p == NULL || b->p == NULL) return a->p == b->p;
  return a->n == b->n && memcmp(a->p, b->p, a->n) == 0;
}

/* Every credential, compared exactly: the hash only finds candidates. */
static int identity_eq(const la_shared *s, const la_creds *c, const la_secret *start,
                       const char *tag) {
  const la_creds *o = &s->id;
  return str_eq(s->tag, tag) && o->grant == c->grant && str_eq(o->token_url, c->token_url) &&
         str_eq(o->client_id, c->client_id) && str_eq(o->username, c->username) &&
         str_eq(o->scope, c->scope) && secret_eq(&o->client_secret, &c->client_secret) &&
         secret_eq(&o->password, &c->password) && secret_eq(&s->start, start);
}

static char *dup_or_null(const char *s, int *bad) {
  char *d;
  if (s == NULL) return NULL;
  if ((d = strdup(s)) == NULL) *bad = 1;
  return d;
}

static void shared_free(la_shared *s) {
  la_entry_clear(&s->e);
  free(s->id.token_url);
  free(s->id.client_id);
  free(s->id.username);
  free(s->id.scope);
  la_secret_clear(&s->id.client_secret);
  la_secret_clear(&s->id.password);
  la_secret_clear(&s->start);
  free(s->tag);
  pthread_cond_destroy(&s->cond);
  pthread_mutex_destroy(&s->lock);
  free(s);
}

static la_shared *shared_new(const la_creds *c, const la_secret *start, const char *tag) {
  la_shared *s = calloc(1, sizeof *s);
  pthread_condattr_t ca;
  int bad = 0;
  if (s == NULL) return NULL;
  pthread_mutex_init(&s->lock, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* waits do not jump with the wall clock */
  pthread_cond_init(&s->cond, &ca);
  pthread_condattr_destroy(&ca);
  la_error_reset(&s->last_error);
  s->refs = 1;
  s->id.grant = c->grant;
  s->id.token_url = dup_or_null(c->token_url, &bad);
  s->id.client_id = dup_or_null(c->client_id, &bad);
  s->id.username = dup_or_null(c->username, &bad);
  s->id.scope = dup_or_null(c->scope, &bad);
  s->tag = dup_or_null(tag, &bad);
  if (c->client_secret.p && la_secret_set(&s->id.client_secret, c->client_secret.p, c->client_secret.n)) bad = 1;
  if (c->password.p && la_secret_set(&s->id.password, c->password.p, c->password.n)) bad = 1;
  if (start->p != NULL) {
    if (la_secret_set(&s->start, start->p, start->n) || la_secret_set(&s->e.refresh, start->p, start->n))
      bad = 1;
  }
  if (bad) {
    shared_free(s);
    return NULL;
  }
  return s;
}

/* The entry for this identity: an existing one when share is set, else a new one. The starting
 * refresh token seeds a new entry; an existing one keeps its own (rotated) chain. tag names the
 * token store behind it: clients with different stores (or none) must not share a chain. */
la_shared *la_shared_get(const la_creds *c, const la_secret *start, const char *tag, int share) {
  la_shared *s;
  uint64_t h;
  if (!share) return shared_new(c, start, tag);
  h = identity_hash(c, start, tag);
  pthread_mutex_lock(&registry_lock);
  for (s = registry; s != NULL; s = s->next) {
    if (s->hash == h && identity_eq(s, c, start, tag)) {
      s->refs++;
      pthread_mutex_unlock(&registry_lock);
      return s;
    }
  }
  if ((s = shared_new(c, start, tag)) != NULL) {
    s->hash = h;
    s->registered = 1;
    s->next = registry;
    registry = s;
  }
  pthread_mutex_unlock(&registry_lock);
  return s;
}

/* Drops one reference; the last one wipes and frees the entry. */
void la_shared_release(la_shared *s) {
  int last;
  if (s == NULL) return;
  pthread_mutex_lock(&registry_lock);
  last = --s->refs == 0;
  if (last && s->registered) {
    la_shared **p = &registry;
    while (*p != s) p = &(*p)->next;
    *p = s->next;
  }
  pthread_mutex_unlock(&registry_lock);
  if (last) shared_free(s);
}

/* Makes the entry's generation visible to the lock-free check on the fresh path. */
void la_shared_publish(la_shared *s) { __atomic_store_n(&s->pub_gen, s->e.gen, __ATOMIC_RELEASE); }

unsigned long la_shared_gen(la_shared *s) { return __atomic_load_n(&s->pub_gen, __ATOMIC_ACQUIRE); }
