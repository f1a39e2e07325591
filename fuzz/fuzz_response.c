/* fuzz_response.c - libFuzzer harness for the token-response ingestion path:
 * la_retry_after -> la_response_decode (lua-cjson) -> la_flow_response, for every grant, mode and
 * cache-entry state, with invariants checked by abort().
 *
 * Input: [status: 2 bytes, big-endian, 100 + v % 500]
 *        [Retry-After: 1 length byte (% 64), then that many bytes]
 *        [X-Rate-Limit-Reset: 1 length byte (% 32), then that many bytes]
 *        [body: the rest]
 * The header caps match the buffers http.c copies those headers into. */
#define _GNU_SOURCE /* memmem */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "../csrc/lusidauth.h"
#include "../csrc/response.h"

/* Distinctive secrets; some seed bodies echo them (raw and encoded). None contains '[' or ']',
 * so a "[redacted]" mark can never complete one. */
#define CLIENT_ID "0oafuzzclient"
#define PASSWORD "Fz!pw Correct&Horse=Battery%42"
#define CLIENT_SECRET "fzCS_0oa1b2c3d4e5SECRETxyz~"
#define REFRESH_TOKEN "fzRT.Rq3vW9xY-refresh-token_77"
#define ACCESS_TOKEN "eyJraWQiOiJmdXp6In0.fzAT.access-token-sig"

#define T0 ((int64_t)1000000 * 1000000000) /* a fixed monotonic "now" (ns) */
#define WALL_NOW ((time_t)1700000000)       /* a fixed wall clock for la_retry_after */
#define MAX_STEPS 64
#define MIN_CUT 8 /* a field cut to its buffer may not end with this many bytes of a secret */

static lua_State *L;

enum { E_EMPTY, E_EMPTY_RT, E_FRESH, E_STALE, E_NSTATES };

/* The secrets, and (filled in at start) each one's forms: raw, form-encoded, "%20"-encoded.
 * BASIC is the base64 credential of the Basic header: live whenever the client secret is. */
enum { S_PASSWORD, S_CLIENT_SECRET, S_REFRESH, S_ACCESS, S_BASIC, NSECRETS };
#define NFORMS 3
static const char *const secret_names[NSECRETS] = {"password", "client secret", "refresh token",
                                                   "access token", "Basic credential"};
static char forms[NSECRETS][NFORMS][256];

static int open_response(lua_State *l) {
  la_response_open(l);
  return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void set_form(char *dst, const char *p, size_t n) {
  if (n >= 256) abort();
  memcpy(dst, p, n);
  dst[n] = '\0';
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  size_t i, j, o;
  la_buf b = {NULL, 0, 0};
  (void)argc;
  (void)argv;
  L = luaL_newstate();
  if (L == NULL) abort();
  luaL_openlibs(L);
  lua_pushcfunction(L, open_response);
  if (lua_pcall(L, 0, 0, 0) != 0) {
    fprintf(stderr, "fuzz_response: la_response_open failed: %s\n", lua_tostring(L, -1));
    abort();
  }
  set_form(forms[S_PASSWORD][0], PASSWORD, strlen(PASSWORD));
  set_form(forms[S_CLIENT_SECRET][0], CLIENT_SECRET, strlen(CLIENT_SECRET));
  set_form(forms[S_REFRESH][0], REFRESH_TOKEN, strlen(REFRESH_TOKEN));
  set_form(forms[S_ACCESS][0], ACCESS_TOKEN, strlen(ACCESS_TOKEN));
  if (la_basic_auth(&b, CLIENT_ID, strlen(CLIENT_ID), CLIENT_SECRET, strlen(CLIENT_SECRET)) != 0)
    abort();
  set_form(forms[S_BASIC][0], b.p + 6, b.n - 6); /* after "Basic " */
  la_buf_free(&b);
  for (i = 0; i < NSECRETS; i++) {
    if (la_urlencode(&b, forms[i][0], strlen(forms[i][0])) != 0) abort();
    set_form(forms[i][1], b.p, b.n);
    for (j = o = 0; j < b.n && o + 4 < 256; j++) { /* '+' for a space becomes "%20" */
      if (b.p[j] == '+') {
        memcpy(forms[i][2] + o, "%20", 3);
        o += 3;
      } else {
        forms[i][2][o++] = b.p[j];
      }
    }
    forms[i][2][o] = '\0';
    la_buf_free(&b);
  }
  return 0;
}

static void fail(const char *what, const char *detail) {
  fprintf(stderr, "fuzz_response: invariant violated: %s%s%s\n", what, detail ? ": " : "",
          detail ? detail : "");
  abort();
}

/* The string in buf[0..cap) must be NUL-terminated inside the buffer; returns its length. */
static size_t terminated(const char *buf, size_t cap, const char *what) {
  const char *z = memchr(buf, '\0', cap);
  if (z == NULL) fail("not NUL-terminated within its buffer", what);
  return (size_t)(z - buf);
}

/* Occurrences of s[0..k) in p[0..n). */
static size_t count(const char *p, size_t n, const char *s, size_t k) {
  size_t c = 0;
  const char *q;
  while ((q = memmem(p, n, s, k)) != NULL) {
    c++;
    n -= (size_t)(q - p) + 1;
    p = q + 1;
  }
  return c;
}

/* Aborts if text (of length n, in a buffer of cap bytes) holds a form of a secret that was live
 * (bit i of live). With src (the server's string the text was copied from): also if the text
 * was cut to its buffer and ends with MIN_CUT or more leading bytes of a form while every such
 * prefix in src belongs to a whole occurrence, i.e. a whole secret was cut, not redacted. */
static void no_secret(const char *text, size_t n, size_t cap, unsigned live, const char *field,
                      const la_field *src) {
  size_t i, j, k;
  char msg[200];
  for (i = 0; i < NSECRETS; i++) {
    if (!(live & (1u << i))) continue;
    for (j = 0; j < NFORMS; j++) {
      const char *s = forms[i][j];
      size_t sn = strlen(s);
      if (memmem(text, n, s, sn) != NULL) {
        snprintf(msg, sizeof msg, "the %s appears in %s: \"%.*s\"", secret_names[i], field,
                 (int)(n > 100 ? 100 : n), text);
        fail("secret leaked", msg);
      }
      if (src == NULL || src->type != LA_F_STRING || n + 1 != cap) continue;
      for (k = MIN_CUT; k < sn && k <= n; k++) {
        size_t whole;
        if (memcmp(text + n - k, s, k) != 0) continue;
        whole = count(src->p, src->n, s, sn);
        if (whole > 0 && whole == count(src->p, src->n, s, k)) {
          snprintf(msg, sizeof msg, "%s was cut to %zu bytes and ends with %zu of the %s's %zu",
                   field, n, k, secret_names[i], sn);
          fail("secret partially leaked", msg);
        }
      }
    }
  }
}

/* Bit i set: secret i is held by the creds or the entry right now. */
static unsigned live_secrets(const la_creds *c, const la_entry *e) {
  unsigned m = 0;
  if (c->password.p != NULL && strcmp(c->password.p, PASSWORD) == 0) m |= 1u << S_PASSWORD;
  if (c->client_secret.p != NULL && strcmp(c->client_secret.p, CLIENT_SECRET) == 0)
    m |= 1u << S_CLIENT_SECRET | 1u << S_BASIC;
  if (e->refresh.p != NULL && strcmp(e->refresh.p, REFRESH_TOKEN) == 0) m |= 1u << S_REFRESH;
  if (e->access.p != NULL && strcmp(e->access.p, ACCESS_TOKEN) == 0) m |= 1u << S_ACCESS;
  return m;
}

/* The error fields and the log note after a step: terminated, and free of live secrets. r is
 * the response they were copied from, or NULL. */
static void check_texts(const la_flow *f, const la_response *r, unsigned live) {
  const la_error *err = &f->err;
  size_t n;
  n = terminated(err->message, sizeof err->message, "message");
  no_secret(err->message, n, sizeof err->message, live, "err.message", NULL);
  n = terminated(err->error, sizeof err->error, "error");
  no_secret(err->error, n, sizeof err->error, live, "err.error", r ? &r->error : NULL);
  n = terminated(err->description, sizeof err->description, "description");
  no_secret(err->description, n, sizeof err->description, live, "err.description",
            r ? &r->error_description : NULL);
  n = terminated(err->uri, sizeof err->uri, "uri");
  no_secret(err->uri, n, sizeof err->uri, live, "err.uri", r ? &r->error_uri : NULL);
  if (f->note_level != LA_LOG_NONE)
    no_secret(f->note, terminated(f->note, sizeof f->note, "note"), sizeof f->note, live,
              "the log note", NULL);
}

static void check_entry_token(const la_entry *e) {
  if (e->access.p == NULL) fail("USE with no access token", NULL);
  if (e->access.n == 0 || e->access.n > LA_TOKEN_MAX || strlen(e->access.p) != e->access.n ||
      !la_header_safe(e->access.p, e->access.n))
    fail("USE with an access token that is not header-safe", NULL);
  if (e->refresh.p != NULL &&
      (e->refresh.n > LA_TOKEN_MAX || !la_header_safe(e->refresh.p, e->refresh.n)))
    fail("a stored refresh token is not header-safe", NULL);
  if (e->refresh_at > e->expires_at) fail("refresh_at after expires_at", NULL);
}

static void setup(la_creds *c, la_entry *e, int grant, int state) {
  memset(c, 0, sizeof *c);
  memset(e, 0, sizeof *e);
  c->grant = grant;
  c->token_url = (char *)"https://example.okta.com/oauth2/default/v1/token";
  c->client_id = (char *)CLIENT_ID;
  c->refresh_skew = 60;
  c->retries = 2;
  c->retry_base = 0.5;
  c->max_retry_wait = 30;
  c->deadline = 60;
  if (grant != LA_GRANT_PAT &&
      la_secret_set(&c->client_secret, CLIENT_SECRET, strlen(CLIENT_SECRET)) != 0)
    abort();
  if (grant == LA_GRANT_PASSWORD) {
    c->username = (char *)"fuzz@example.com";
    if (la_secret_set(&c->password, PASSWORD, strlen(PASSWORD)) != 0) abort();
  }
  /* a refresh-token client always starts with one; the others only in some states */
  if ((grant == LA_GRANT_REFRESH || state != E_EMPTY) && grant != LA_GRANT_PAT &&
      la_secret_set(&e->refresh, REFRESH_TOKEN, strlen(REFRESH_TOKEN)) != 0)
    abort();
  if (state == E_FRESH || state == E_STALE) {
    /* stored an hour ago, with 3630 s to live (stale: 30 s left) or 7200 s (fresh) */
    double life = state == E_FRESH ? 7200 : 3630;
    if (la_entry_store(e, ACCESS_TOKEN, strlen(ACCESS_TOKEN), life, T0 - (int64_t)3600e9,
                       c->refresh_skew) != 0)
      abort();
    if (grant == LA_GRANT_PAT) e->expires_at = e->refresh_at = INT64_MAX; /* as client.c does */
  }
  if (state == E_STALE) e->retry_at = 0; /* due for a refresh attempt */
}

static void teardown(la_creds *c, la_entry *e) {
  la_entry_clear(e);
  la_secret_clear(&c->client_secret);
  la_secret_clear(&c->password);
}

/* Runs one flow to completion, answering every request with the same response r. */
static void run(const la_response *r, int grant, int mode, int state, uint64_t seed) {
  la_creds c;
  la_entry e;
  la_flow f;
  la_action a;
  int64_t now = T0;
  int steps = 0;
  unsigned live = 0;
  setup(&c, &e, grant, state);
  a = la_flow_start(&f, &c, &e, mode, now, seed);
  while (a.kind == LA_ACT_SEND || a.kind == LA_ACT_WAIT) {
    if (++steps > MAX_STEPS) fail("the flow did not settle", NULL);
    if (a.kind == LA_ACT_WAIT) {
      double cap = fmax(c.max_retry_wait, c.retry_base * ldexp(1.0, c.retries));
      if (!(a.wait >= 0 && a.wait <= cap)) fail("WAIT out of range", NULL);
      now += (int64_t)(a.wait * 1e9);
      a = la_flow_waited(&f);
      continue;
    }
    if (a.grant < LA_GRANT_PASSWORD || a.grant > LA_GRANT_PAT) fail("SEND of an unknown grant", NULL);
    live = live_secrets(&c, &e); /* what copy_text must redact for this response */
    now += 50000000;             /* 50 ms round trip */
    a = la_flow_response(&f, &c, &e, r, now - 50000000, now);
    check_texts(&f, r, live); /* whatever the action: a served stale token keeps f.err too */
  }
  switch (a.kind) {
  case LA_ACT_USE:
    check_entry_token(&e);
    break;
  case LA_ACT_FAIL:
    if (f.err.kind <= LA_ERR_NONE || f.err.kind > LA_ERR_PROTOCOL) fail("FAIL with no error kind", NULL);
    if (f.err.message[0] == '\0') fail("FAIL with an empty message", NULL);
    check_texts(&f, steps ? r : NULL, live | live_secrets(&c, &e));
    break;
  default:
    fail("unknown action kind", NULL);
  }
  teardown(&c, &e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char retry_after[64], rate_reset[32];
  size_t pos = 0, n;
  la_response r;
  int grant, mode, state;
  if (size < 4) return 0;
  memset(&r, 0, sizeof r);
  la_error_reset(&r.transport);
  r.status = 100 + (long)(((unsigned)data[0] << 8 | data[1]) % 500);
  pos = 2;
  n = data[pos++] % sizeof retry_after;
  if (n > size - pos) n = size - pos;
  memcpy(retry_after, data + pos, n);
  retry_after[n] = '\0';
  pos += n;
  if (pos >= size) return 0;
  n = data[pos++] % sizeof rate_reset;
  if (n > size - pos) n = size - pos;
  memcpy(rate_reset, data + pos, n);
  rate_reset[n] = '\0';
  pos += n;

  r.retry_after = la_retry_after(r.status, retry_after, rate_reset, WALL_NOW);
  if (isnan(r.retry_after) || (r.retry_after < 0 && r.retry_after != -1))
    fail("la_retry_after returned neither -1 nor a wait >= 0", NULL);
  /* the body is the exact tail of the input, so ASan sees any read past its end */
  la_response_decode(L, (const char *)data + pos, size - pos, &r);
  if (lua_gettop(L) != 1) fail("la_response_decode did not leave exactly one value", NULL);
  if (r.body_problem == NULL && !lua_istable(L, -1))
    fail("no body problem but no decoded table", NULL);

  for (grant = LA_GRANT_PASSWORD; grant <= LA_GRANT_PAT; grant++)
    for (mode = LA_MODE_TOKEN; mode <= LA_MODE_REFRESH; mode++)
      for (state = 0; state < E_NSTATES; state++)
        run(&r, grant, mode, state, (uint64_t)size * 0x9E3779B97F4A7C15ULL);
  lua_settop(L, 0);
  /* free this input's Lua garbage now: with mallocs and frees balanced per input, libFuzzer
   * does not rerun every input under a full LeakSanitizer scan */
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
