/* host.c - a C program that embeds Lua the way servers do: N threads, each with its own
 * lua_State, each requiring lusidauth and calling token() in a loop. Clients of the same
 * identity share one token and one refresh across all the states (lusidauth's process-wide
 * cache), so the token endpoint sees one refresh per expiry, not one per thread.
 *
 *   host [-t THREADS] [-n CALLS] [-i MICROSECONDS] [-c CHECK_EVERY] [-d SECONDS] [-u TOKENS]
 * -d: each thread stops after SECONDS (and -n calls at most); -u: after it has seen TOKENS
 * distinct tokens. Credentials come from FBN_TOKEN_URL, FBN_CLIENT_ID, FBN_CLIENT_SECRET,
 * FBN_USERNAME and FBN_PASSWORD. LUSIDAUTH_STORE=redis shares the token with other processes
 * through Redis (LUSIDAUTH_REDIS_PORT, LUSIDAUTH_REDIS_PASSWORD; host 127.0.0.1).
 * LUSIDAUTH_HOST_LOG=1 prints the client's log lines to stderr. With LUSIDAUTH_VALIDATE_URL set (the fake Okta's /_control/validate), every
 * CHECK_EVERY-th token is checked there with libcurl. Prints one summary line; exits 1 when a
 * thread's last call failed or a token was not valid. */
#define _DEFAULT_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define MAX_TOKENS 4096

static int threads = 16, calls = 10000, interval_us = 0, check_every = 1000, until_tokens = 0;
static double duration_s = 0;
static const char *validate_url;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *tokens[MAX_TOKENS]; /* distinct tokens seen, in order */
static int ntokens;
static long failures, invalid, checked, unrecovered;
static double *latencies; /* per call, in microseconds */
static long *done_calls;  /* per thread: calls made (fewer than -n with -d or -u) */

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static const char *SETUP =
    "local lusidauth = require 'lusidauth'\n"
    "local e = os.getenv\n"
    "local c = lusidauth.new_password { token_url = e 'FBN_TOKEN_URL', client_id = e 'FBN_CLIENT_ID',\n"
    "  client_secret = e 'FBN_CLIENT_SECRET', username = e 'FBN_USERNAME', password = e 'FBN_PASSWORD',\n"
    "  deadline = tonumber(e 'LUSIDAUTH_DEADLINE') or 10, retry_base = 0.05,\n"
    "  store = e 'LUSIDAUTH_STORE', redis = e 'LUSIDAUTH_STORE' == 'redis' and {\n"
    "    port = tonumber(e 'LUSIDAUTH_REDIS_PORT'), password = e 'LUSIDAUTH_REDIS_PASSWORD' } or nil,\n"
    "  log = e 'LUSIDAUTH_HOST_LOG' and function(level, msg)\n"
    "    io.stderr:write(os.date('!%H:%M:%S '), level, ': ', msg, '\\n') end or nil }\n"
    "return function() return c:token() end\n";

static void note_token(const char *tok) {
  int i;
  pthread_mutex_lock(&lock);
  for (i = ntokens - 1; i >= 0; i--)
    if (strcmp(tokens[i], tok) == 0) break;
  if (i < 0 && ntokens < MAX_TOKENS) tokens[ntokens++] = strdup(tok);
  pthread_mutex_unlock(&lock);
}

static size_t sink(char *p, size_t size, size_t n, void *ud) {
  size_t len = size * n, have = strlen((char *)ud);
  if (have + len < 256) {
    memcpy((char *)ud + have, p, len);
    ((char *)ud)[have + len] = '\0';
  }
  return len;
}

/* Asks the fake Okta whether the token is valid now. */
static int still_valid(CURL *h, const char *tok) {
  char url[1024], body[256] = "";
  char *esc = curl_easy_escape(h, tok, 0);
  snprintf(url, sizeof url, "%s?token=%s", validate_url, esc);
  curl_free(esc);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, (void *)body);
  if (curl_easy_perform(h) != CURLE_OK) return 0;
  return strstr(body, "\"valid\":true") != NULL;
}

static void *worker(void *arg) {
  long id = (long)arg, i, last_len = 0, seen = 0;
  double start = now_us();
  int last_ok = 0;
  char last[512] = "";
  lua_State *L = luaL_newstate();
  CURL *h = validate_url ? curl_easy_init() : NULL;
  luaL_openlibs(L);
  if (luaL_dostring(L, SETUP) != 0) {
    fprintf(stderr, "host: thread %ld: %s\n", id, lua_tostring(L, -1));
    exit(2);
  }
  for (i = 0; i < calls; i++) {
    double t0, t1;
    size_t n;
    const char *tok;
    lua_pushvalue(L, -1);
    t0 = now_us();
    if (lua_pcall(L, 0, 2, 0) != 0) {
      fprintf(stderr, "host: thread %ld: %s\n", id, lua_tostring(L, -1));
      exit(2);
    }
    t1 = now_us();
    latencies[id * calls + i] = t1 - t0;
    tok = lua_tolstring(L, -2, &n);
    last_ok = tok != NULL;
    if (tok == NULL) {
      pthread_mutex_lock(&lock);
      failures++;
      pthread_mutex_unlock(&lock);
    } else {
      if ((long)n != last_len || memcmp(tok, last, n) != 0) {
        note_token(tok);
        if (n < sizeof last) memcpy(last, tok, n + 1);
        last_len = (long)n;
        seen++;
      }
      if (h != NULL && check_every > 0 && i % check_every == 0) {
        int ok = still_valid(h, tok);
        pthread_mutex_lock(&lock);
        checked++;
        if (!ok) invalid++;
        pthread_mutex_unlock(&lock);
      }
    }
    lua_pop(L, 2);
    if (interval_us > 0) usleep((useconds_t)interval_us);
    if ((until_tokens > 0 && seen >= until_tokens) ||
        (duration_s > 0 && now_us() - start >= duration_s * 1e6)) {
      i++;
      break;
    }
  }
  pthread_mutex_lock(&lock);
  done_calls[id] = i;
  pthread_mutex_unlock(&lock);
  if (!last_ok) {
    pthread_mutex_lock(&lock);
    unrecovered++;
    pthread_mutex_unlock(&lock);
  }
  if (h != NULL) curl_easy_cleanup(h);
  lua_close(L);
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  pthread_t *tids;
  long i, total;
  int opt;
  double t0, elapsed;
  while ((opt = getopt(argc, argv, "t:n:i:c:d:u:")) != -1) {
    switch (opt) {
    case 't': threads = atoi(optarg); break;
    case 'n': calls = atoi(optarg); break;
    case 'i': interval_us = atoi(optarg); break;
    case 'c': check_every = atoi(optarg); break;
    case 'd': duration_s = atof(optarg); break;
    case 'u': until_tokens = atoi(optarg); break;
    default:
      fprintf(stderr, "usage: host [-t THREADS] [-n CALLS] [-i MICROSECONDS] [-c CHECK_EVERY] "
                      "[-d SECONDS] [-u TOKENS]\n");
      return 2;
    }
  }
  if (threads < 1 || calls < 1) return 2;
  validate_url = getenv("LUSIDAUTH_VALIDATE_URL");
  curl_global_init(CURL_GLOBAL_DEFAULT);
  total = (long)threads * calls;
  latencies = calloc((size_t)total, sizeof *latencies);
  tids = calloc((size_t)threads, sizeof *tids);
  done_calls = calloc((size_t)threads, sizeof *done_calls);
  if (latencies == NULL || tids == NULL || done_calls == NULL) return 2;
  t0 = now_us();
  for (i = 0; i < threads; i++) pthread_create(&tids[i], NULL, worker, (void *)i);
  for (i = 0; i < threads; i++) pthread_join(tids[i], NULL);
  elapsed = (now_us() - t0) / 1e6;
  { /* the calls made, packed to the front, for the percentiles */
    long k = 0, j;
    for (i = 0; i < threads; i++)
      for (j = 0; j < done_calls[i]; j++) latencies[k++] = latencies[i * calls + j];
    total = k > 0 ? k : 1;
  }
  qsort(latencies, (size_t)total, sizeof *latencies, cmp);
  printf("threads=%d calls=%ld failures=%ld unrecovered=%ld tokens=%d checked=%ld invalid=%ld "
         "elapsed_s=%.2f p50_us=%.2f p99_us=%.2f max_us=%.0f\n",
         threads, total, failures, unrecovered, ntokens, checked, invalid, elapsed, latencies[total / 2],
         latencies[total * 99 / 100], latencies[total - 1]);
  for (i = 0; i < ntokens; i++) free(tokens[i]);
  free(latencies);
  free(tids);
  free(done_calls);
  curl_global_cleanup();
  return unrecovered > 0 || invalid > 0; /* failures during an outage are expected */
}
