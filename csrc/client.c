/* client.c - the lusidauth.client userdata: options, methods, __gc/__close/__tostring, and the
 * blocking driver that runs the flow (flow.c) over the libcurl transport (http.c). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compat.h"
#include "http.h"
#include "lusidauth.h"
#include "response.h"

/* Slots of the client's uservalue table. */
enum { UV_HOOK = 1, UV_TOKEN = 2, UV_INFO = 3, UV_LOG = 4 };

#define LA_API_BODY_CAP (64 * 1024 * 1024) /* largest LUSID API response accepted */

typedef struct la_client {
  int closed;
  int has_hook;
  int has_log;
  int insecure_http;
  la_creds creds;
  la_http_opts http;
  la_entry entry;
  CURL *curl;
  unsigned long cached_gen; /* entry.gen of the token string cached in the uservalue */
  /* scratch for one request, owned here so that a raise cannot leak or leave it unwiped */
  la_buf form, auth;
  la_http_result res;
} la_client;

static void scratch_free(la_client *c) {
  la_buf_free(&c->form);
  la_buf_free(&c->auth);
  la_buf_free(&c->res.body);
  la_buf_free(&c->res.headers);
}

static void client_release(la_client *c) {
  scratch_free(c);
  la_entry_clear(&c->entry);
  free(c->creds.token_url);
  free(c->creds.client_id);
  free(c->creds.username);
  free(c->creds.scope);
  c->creds.token_url = c->creds.client_id = c->creds.username = c->creds.scope = NULL;
  la_secret_clear(&c->creds.client_secret);
  la_secret_clear(&c->creds.password);
  la_http_opts_free(&c->http);
  if (c->curl != NULL) curl_easy_cleanup(c->curl);
  c->curl = NULL;
  c->closed = 1;
}

static la_client *check_client(lua_State *L) {
  return (la_client *)luaL_checkudata(L, 1, LA_CLIENT_MT);
}

static la_client *check_open(lua_State *L) {
  la_client *c = check_client(L);
  if (c->closed) luaL_error(L, "lusidauth: attempt to use a closed client");
  return c;
}

/* ---- options ---- */

static const char *const known_options[] = {
    "token_url", "client_id", "client_secret", "username", "password", "refresh_token",
    "access_token", "scope", "refresh_skew", "timeout", "connect_timeout", "retries", "proxy",
    "proxy_username", "proxy_password", "ca_file", "ca_path", "insecure_http", "user_agent",
    "app_name", "api_url", "on_refresh_token", "shared", "correlation_id", "read_timeout", "log", "max_retry_wait", "retry_base",
    "deadline", NULL};

static void check_known(lua_State *L, int opts) {
  lua_pushnil(L);
  while (lua_next(L, opts) != 0) {
    int i, found = 0;
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "lusidauth: option names must be strings, not %s", luaL_typename(L, -2));
    for (i = 0; known_options[i] != NULL && !found; i++)
      found = strcmp(lua_tostring(L, -2), known_options[i]) == 0;
    if (!found) luaL_error(L, "lusidauth: unknown option '%s'", lua_tostring(L, -2));
    lua_pop(L, 1);
  }
}

/* The option's string, or NULL when absent. The opts table keeps it alive. */
static const char *opt_str(lua_State *L, int opts, const char *name, size_t *len) {
  const char *s;
  size_t n;
  lua_getfield(L, opts, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "lusidauth: option '%s' must be a string, not a %s", name,
               luaL_typename(L, -1));
  s = lua_tolstring(L, -1, &n);
  if (n == 0) luaL_error(L, "lusidauth: option '%s' must not be empty", name);
  if (strlen(s) != n) luaL_error(L, "lusidauth: option '%s' must not contain a NUL byte", name);
  lua_pop(L, 1);
  if (len != NULL) *len = n;
  return s;
}

static char *opt_dup(lua_State *L, int opts, const char *name) {
  const char *s = opt_str(L, opts, name, NULL);
  char *d;
  if (s == NULL) return NULL;
  if ((d = strdup(s)) == NULL) luaL_error(L, "lusidauth: out of memory");
  return d;
}

static void opt_secret(lua_State *L, int opts, const char *name, la_secret *dst) {
  size_t n;
  const char *s = opt_str(L, opts, name, &n);
  if (s != NULL && la_secret_set(dst, s, n) != 0) luaL_error(L, "lusidauth: out of memory");
}

static double opt_num(lua_State *L, int opts, const char *name, double def, double lo, double hi) {
  double v;
  lua_getfield(L, opts, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  if (lua_type(L, -1) != LUA_TNUMBER)
    luaL_error(L, "lusidauth: option '%s' must be a number, not a %s", name,
               luaL_typename(L, -1));
  v = (double)lua_tonumber(L, -1);
  if (!(v >= lo && v <= hi)) {
    char range[64];
    snprintf(range, sizeof range, "%g to %g", lo, hi);
    luaL_error(L, "lusidauth: option '%s' must be from %s", name, range);
  }
  lua_pop(L, 1);
  return v;
}

static int opt_bool(lua_State *L, int opts, const char *name, int def) {
  int v;
  lua_getfield(L, opts, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  if (!lua_isboolean(L, -1))
    luaL_error(L, "lusidauth: option '%s' must be a boolean, not a %s", name,
               luaL_typename(L, -1));
  v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static int is_loopback(const char *host) {
  return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
         strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0;
}

/* A URL option: parseable, http(s), no user:password@ in it, https unless loopback/insecure. */
static void check_url(lua_State *L, const char *name, const char *url, int insecure) {
  CURLU *u = curl_url();
  char *scheme = NULL, *user = NULL, *host = NULL;
  const char *problem = NULL;
  if (u == NULL) luaL_error(L, "lusidauth: out of memory");
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
    problem = "is not a valid URL";
  else if (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0)
    problem = "must be an http or https URL";
  else if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK)
    problem = "must not contain credentials (user:password@); use the options for them";
  else if (strcmp(scheme, "http") == 0 && !insecure && !is_loopback(host))
    problem = "must use https (http is allowed only to a loopback host, or with insecure_http = true)";
  curl_free(scheme);
  curl_free(host);
  if (user != NULL) {
    la_wipe(user, strlen(user));
    curl_free(user);
  }
  curl_url_cleanup(u);
  if (problem != NULL) luaL_error(L, "lusidauth: option '%s' %s", name, problem);
}

static void require_opt(lua_State *L, int opts, int grant, const char *name) {
  lua_getfield(L, opts, name);
  if (lua_isnil(L, -1))
    luaL_error(L, "lusidauth: the %s grant needs option '%s'", la_grant_name(grant), name);
  lua_pop(L, 1);
}

static void read_options(lua_State *L, la_client *c, int grant, int opts) {
  static const char *const needs[][6] = {
      {"token_url", "client_id", "client_secret", "username", "password", NULL},
      {"token_url", "client_id", "client_secret", "refresh_token", NULL, NULL},
      {"token_url", "client_id", "client_secret", NULL, NULL, NULL},
      {"access_token", NULL, NULL, NULL, NULL, NULL}};
  size_t n;
  const char *s;
  int i, insecure;

  check_known(L, opts);
  for (i = 0; needs[grant][i] != NULL; i++) require_opt(L, opts, grant, needs[grant][i]);
  c->creds.grant = grant;
  insecure = c->insecure_http = opt_bool(L, opts, "insecure_http", 0);
  (void)opt_bool(L, opts, "shared", 1);
  c->creds.refresh_skew = opt_num(L, opts, "refresh_skew", 60, 0, 86400);
  c->creds.retries = (int)opt_num(L, opts, "retries", 3, 0, 100);
  c->creds.retry_base = opt_num(L, opts, "retry_base", 0.5, 0, 60);
  c->creds.max_retry_wait = opt_num(L, opts, "max_retry_wait", 30, 0, 3600);
  c->creds.deadline = opt_num(L, opts, "deadline", 60, 0.001, 86400);
  c->http.timeout = opt_num(L, opts, "timeout", 30, 0.001, 3600);
  c->http.connect_timeout = opt_num(L, opts, "connect_timeout", 10, 0.001, 3600);
  c->http.read_timeout = opt_num(L, opts, "read_timeout", 0, 0, 3600);

  if (grant == LA_GRANT_PAT) {
    s = opt_str(L, opts, "access_token", &n);
    if (n > LA_TOKEN_MAX || !la_header_safe(s, n))
      luaL_error(L, "lusidauth: option 'access_token' must not contain spaces or control "
                    "characters");
    if (la_entry_store(&c->entry, s, n, 1, 0, 0) != 0) luaL_error(L, "lusidauth: out of memory");
    c->entry.expires_at = c->entry.refresh_at = INT64_MAX; /* a PAT does not expire here */
  } else {
    s = opt_str(L, opts, "token_url", NULL);
    check_url(L, "token_url", s, insecure);
    c->creds.token_url = opt_dup(L, opts, "token_url");
    c->creds.client_id = opt_dup(L, opts, "client_id");
    c->creds.username = opt_dup(L, opts, "username");
    c->creds.scope = opt_dup(L, opts, "scope");
    opt_secret(L, opts, "client_secret", &c->creds.client_secret);
    opt_secret(L, opts, "password", &c->creds.password);
    s = opt_str(L, opts, "refresh_token", &n);
    if (s != NULL) {
      if (n > LA_TOKEN_MAX || !la_header_safe(s, n))
        luaL_error(L, "lusidauth: option 'refresh_token' must not contain spaces or control "
                      "characters");
      opt_secret(L, opts, "refresh_token", &c->entry.refresh);
    }
  }
  s = opt_str(L, opts, "proxy", NULL);
  if (s != NULL) check_url(L, "proxy", s, 1);
  c->http.proxy = opt_dup(L, opts, "proxy");
  c->http.proxy_username = opt_dup(L, opts, "proxy_username");
  opt_secret(L, opts, "proxy_password", &c->http.proxy_password);
  c->http.ca_file = opt_dup(L, opts, "ca_file");
  c->http.ca_path = opt_dup(L, opts, "ca_path");
  c->http.user_agent = opt_dup(L, opts, "user_agent");
  if (c->http.user_agent == NULL && (c->http.user_agent = strdup("lusidauth/" LA_VERSION)) == NULL)
    luaL_error(L, "lusidauth: out of memory");
  if (opt_str(L, opts, "api_url", NULL) != NULL)
    check_url(L, "api_url", opt_str(L, opts, "api_url", NULL), insecure);

  /* Lua-side values: the hook, and the non-secret options the Lua layer reads */
  la_getuv(L, -1);
  lua_getfield(L, opts, "on_refresh_token");
  if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
    luaL_error(L, "lusidauth: option 'on_refresh_token' must be a function, not a %s",
               luaL_typename(L, -1));
  c->has_hook = lua_isfunction(L, -1);
  lua_rawseti(L, -2, UV_HOOK);
  lua_getfield(L, opts, "log");
  if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
    luaL_error(L, "lusidauth: option 'log' must be a function, not a %s", luaL_typename(L, -1));
  c->has_log = lua_isfunction(L, -1);
  lua_rawseti(L, -2, UV_LOG);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, la_grant_name(grant));
  lua_setfield(L, -2, "grant");
  if ((s = opt_str(L, opts, "app_name", NULL)) != NULL) {
    lua_pushstring(L, s);
    lua_setfield(L, -2, "app_name");
  }
  if ((s = opt_str(L, opts, "api_url", NULL)) != NULL) {
    lua_pushstring(L, s);
    lua_setfield(L, -2, "api_url");
  }
  if ((s = opt_str(L, opts, "correlation_id", NULL)) != NULL) {
    lua_pushstring(L, s);
    lua_setfield(L, -2, "correlation_id");
  }
  lua_rawseti(L, -2, UV_INFO);
  lua_pop(L, 1);
}

/* core.new(grant, opts): box first, then acquire, so __gc can clean a half-built client. */
static int client_new(lua_State *L) {
  static const char *const grants[] = {"password", "refresh_token", "client_credentials", "pat",
                                       NULL};
  int grant = luaL_checkoption(L, 1, NULL, grants);
  la_client *c;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  c = (la_client *)la_newuserdata(L, sizeof *c);
  memset(c, 0, sizeof *c);
  c->closed = 1; /* until fully built: nothing may use it */
  luaL_getmetatable(L, LA_CLIENT_MT);
  lua_setmetatable(L, -2);
  lua_createtable(L, 4, 0);
  la_setuv(L, -2);
  read_options(L, c, grant, 2);
  c->closed = 0;
  return 1;
}

/* ---- the token ---- */

/* Pushes the access token, reusing the Lua string made the last time it changed. */
static void push_token(lua_State *L, la_client *c) {
  la_getuv(L, 1);
  if (c->cached_gen != c->entry.gen) {
    lua_pushlstring(L, c->entry.access.p, c->entry.access.n);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, UV_TOKEN);
    c->cached_gen = c->entry.gen;
  } else {
    lua_rawgeti(L, -1, UV_TOKEN);
  }
  lua_remove(L, -2);
}

static int push_result(lua_State *L, la_client *c, int64_t now) {
  push_token(L, c);
  if (c->creds.grant == LA_GRANT_PAT) return 1;
  la_pushseconds(L, la_entry_seconds_left(&c->entry, now));
  return 2;
}

static void call_hook(lua_State *L, la_client *c) {
  if (!c->has_hook || c->entry.refresh.p == NULL) return;
  la_getuv(L, 1);
  lua_rawgeti(L, -1, UV_HOOK);
  lua_pushlstring(L, c->entry.refresh.p, c->entry.refresh.n);
  if (lua_pcall(L, 1, 0, 0) != 0) lua_error(L); /* the state is consistent: let it propagate */
  lua_pop(L, 1);
}

/* Passes the flow's note, if any, to the log hook. A failing hook is ignored: logging must
 * never break the token flow. */
static void log_note(lua_State *L, la_client *c, la_flow *f) {
  if (f->note_level == LA_LOG_NONE) return;
  if (c->has_log) {
    la_getuv(L, 1);
    lua_rawgeti(L, -1, UV_LOG);
    lua_pushstring(L, la_log_level_name(f->note_level));
    lua_pushstring(L, f->note);
    if (lua_pcall(L, 2, 0, 0) != 0) lua_pop(L, 1);
    lua_pop(L, 1);
  }
  f->note_level = LA_LOG_NONE;
}

/* Sends one request for the flow and feeds the answer back to it. */
static la_action send_one(lua_State *L, la_client *c, la_flow *f, int grant) {
  la_response r;
  la_action a;
  int64_t sent_at;
  memset(&r, 0, sizeof r);
  la_error_reset(&r.transport);
  r.retry_after = -1;
  scratch_free(c);
  if (la_flow_request(&c->creds, &c->entry, grant, &c->form, &c->auth) != 0)
    luaL_error(L, "lusidauth: out of memory");
  sent_at = la_now();
  if (la_http_post(&c->curl, &c->http, c->creds.token_url, &c->form, &c->auth, &c->res,
                   &r.transport) == 0) {
    la_buf_free(&c->form);
    la_buf_free(&c->auth);
    r.status = c->res.status;
    r.retry_after = la_retry_after(r.status, c->res.retry_after, c->res.rate_reset, time(NULL));
    la_response_decode(L, c->res.body.p, c->res.body.n, &r);
  } else {
    lua_pushnil(L);
  }
  a = la_flow_response(f, &c->creds, &c->entry, &r, sent_at, la_now());
  lua_pop(L, 1);
  scratch_free(c);
  log_note(L, c, f);
  if (f->rotated) call_hook(L, c);
  return a;
}

static int run_flow(lua_State *L, la_client *c, int mode) {
  la_flow f;
  int64_t now = la_now();
  la_action a = la_flow_start(&f, &c->creds, &c->entry, mode, now,
                              (uint64_t)now ^ (uint64_t)(uintptr_t)c);
  int steps = 0;
  while (a.kind == LA_ACT_SEND || a.kind == LA_ACT_WAIT) {
    if (++steps > 256) { /* the flow always settles far sooner; never loop forever */
      la_error_set(&f.err, LA_ERR_PROTOCOL, 0, "token flow did not settle");
      a.kind = LA_ACT_FAIL;
      break;
    }
    if (a.kind == LA_ACT_WAIT) {
      struct timespec ts;
      ts.tv_sec = (time_t)a.wait;
      ts.tv_nsec = (long)((a.wait - (double)ts.tv_sec) * 1e9);
      while (nanosleep(&ts, &ts) != 0 && errno == EINTR) { /* interrupted: sleep the rest */
      }
      a = la_flow_waited(&f);
      continue;
    }
    a = send_one(L, c, &f, a.grant);
  }
  if (a.kind == LA_ACT_USE && c->entry.access.p != NULL) return push_result(L, c, la_now());
  lua_pushnil(L);
  la_push_error(L, &f.err);
  return 2;
}

/* c:token() --> access_token, expires_in | nil, err. The fresh path does no I/O. */
static int client_token(lua_State *L) {
  la_client *c = check_open(L);
  int64_t now = la_now();
  if (c->entry.access.p != NULL && now < c->entry.refresh_at) return push_result(L, c, now);
  return run_flow(L, c, LA_MODE_TOKEN);
}

static la_client *check_oauth(lua_State *L, const char *method) {
  la_client *c = check_open(L);
  if (c->creds.grant == LA_GRANT_PAT)
    luaL_error(L, "lusidauth: %s() is not available on a personal access token client", method);
  return c;
}

static int client_login(lua_State *L) { return run_flow(L, check_oauth(L, "login"), LA_MODE_LOGIN); }

static int client_refresh(lua_State *L) {
  return run_flow(L, check_oauth(L, "refresh"), LA_MODE_REFRESH);
}

static int client_invalidate(lua_State *L) {
  la_client *c = check_open(L);
  if (c->creds.grant != LA_GRANT_PAT) {
    la_entry_invalidate(&c->entry);
    la_getuv(L, 1);
    lua_pushnil(L);
    lua_rawseti(L, -2, UV_TOKEN);
  }
  return 0;
}

static int client_expires_in(lua_State *L) {
  la_client *c = check_open(L);
  int64_t now = la_now();
  if (c->creds.grant == LA_GRANT_PAT || la_entry_state(&c->entry, now) == LA_EMPTY ||
      la_entry_state(&c->entry, now) == LA_EXPIRED)
    lua_pushnil(L);
  else
    la_pushseconds(L, la_entry_seconds_left(&c->entry, now));
  return 1;
}

static int client_refresh_token(lua_State *L) {
  la_client *c = check_open(L);
  if (c->entry.refresh.p == NULL)
    lua_pushnil(L);
  else
    lua_pushlstring(L, c->entry.refresh.p, c->entry.refresh.n);
  return 1;
}

/* close, __gc and __close: idempotent; wipes every secret. */
static int client_close(lua_State *L) {
  la_client *c = check_client(L);
  client_release(c); /* safe on a half-built or already closed client */
  la_getuv(L, 1);
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    lua_rawseti(L, -2, UV_TOKEN);
    lua_pushnil(L);
    lua_rawseti(L, -2, UV_HOOK);
  }
  lua_pop(L, 1);
  return 0;
}

static int client_tostring(lua_State *L) {
  la_client *c = check_client(L);
  int64_t now = la_now();
  if (c->closed) {
    lua_pushliteral(L, "lusidauth.client (closed)");
  } else if (c->creds.grant == LA_GRANT_PAT) {
    lua_pushliteral(L, "lusidauth.client (pat)");
  } else {
    int st = la_entry_state(&c->entry, now);
    if (st == LA_FRESH || st == LA_STALE)
      lua_pushfstring(L, "lusidauth.client (%s, client_id=%s, token valid %d s)",
                      la_grant_name(c->creds.grant), c->creds.client_id,
                      (int)la_entry_seconds_left(&c->entry, now));
    else
      lua_pushfstring(L, "lusidauth.client (%s, client_id=%s, %s)", la_grant_name(c->creds.grant),
                      c->creds.client_id, st == LA_EMPTY ? "no token" : "token expired");
  }
  return 1;
}

/* core.info(c): the client's non-secret options, for the Lua layer. */
static int client_info(lua_State *L) {
  check_open(L);
  la_getuv(L, 1);
  lua_rawgeti(L, -1, UV_INFO);
  return 1;
}

/* Pushes the header lines of a response as a table: lowercase name -> value (repeats joined). */
static void push_headers(lua_State *L, const la_buf *raw) {
  const char *p = raw->p, *end = raw->p + raw->n;
  lua_newtable(L);
  while (p != NULL && p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p)), *colon, *v, *ve;
    if (eol == NULL) eol = end;
    colon = memchr(p, ':', (size_t)(eol - p));
    if (colon != NULL && colon > p && memcmp(p, "HTTP/", 5) != 0) {
      luaL_Buffer b;
      const char *k;
      v = colon + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) v++;
      ve = eol;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      luaL_buffinit(L, &b);
      for (k = p; k < colon; k++) luaL_addchar(&b, (char)((*k >= 'A' && *k <= 'Z') ? *k + 32 : *k));
      luaL_pushresult(&b);
      lua_pushvalue(L, -1);
      lua_rawget(L, -3);
      if (lua_isstring(L, -1)) {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_rawset(L, -3);
    }
    p = eol + 1;
  }
}

static int valid_method(const char *m) {
  if (*m == '\0') return 0;
  for (; *m != '\0'; m++)
    if (*m < 'A' || *m > 'Z') return 0;
  return 1;
}

/* core.request(c, method, url, header_lines, body) --> status, headers, body | nil, err.
 * A LUSID API call through the client's libcurl handle and options (TLS, proxy, timeouts). */
static int client_request(lua_State *L) {
  la_client *c = check_open(L);
  const char *method = luaL_checkstring(L, 2);
  const char *url = luaL_checkstring(L, 3);
  size_t body_len = 0, i, nlines;
  const char *body = luaL_optlstring(L, 5, NULL, &body_len);
  struct curl_slist *list = NULL, *tmp;
  la_http_req rq;
  la_error err;
  luaL_checktype(L, 4, LUA_TTABLE);
  if (!valid_method(method)) luaL_argerror(L, 2, "an HTTP method in capitals");
  check_url(L, "url", url, c->insecure_http);
  nlines = la_rawlen(L, 4);
  for (i = 1; i <= nlines; i++) { /* check every line before allocating anything */
    size_t n;
    const char *line;
    lua_rawgeti(L, 4, (int)i);
    line = lua_tolstring(L, -1, &n);
    if (line == NULL || strlen(line) != n || strpbrk(line, "\r\n") != NULL || strchr(line, ':') == NULL)
      luaL_error(L, "lusidauth: header line %d is not a single 'Name: value' line", (int)i);
    lua_pop(L, 1);
  }
  tmp = curl_slist_append(NULL, "Expect:");
  for (i = 1; tmp != NULL && i <= nlines; i++) {
    lua_rawgeti(L, 4, (int)i);
    list = tmp;
    tmp = curl_slist_append(list, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  if (tmp == NULL) {
    la_http_free_headers(list);
    return luaL_error(L, "lusidauth: out of memory");
  }
  scratch_free(c);
  memset(&rq, 0, sizeof rq);
  rq.what = "LUSID API call";
  rq.method = method;
  rq.url = url;
  rq.headers = tmp;
  rq.body = body;
  rq.body_len = body_len;
  rq.cap = LA_API_BODY_CAP;
  rq.keep_headers = 1;
  la_error_reset(&err);
  if (la_http_perform(&c->curl, &c->http, &rq, &c->res, &err) != 0) {
    scratch_free(c);
    lua_pushnil(L);
    la_push_error(L, &err);
    return 2;
  }
  la_pushseconds(L, c->res.status);
  push_headers(L, &c->res.headers);
  lua_pushlstring(L, c->res.body.p != NULL ? c->res.body.p : "", c->res.body.n);
  scratch_free(c);
  return 3;
}

void la_client_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"token", client_token},
                                     {"login", client_login},
                                     {"refresh", client_refresh},
                                     {"invalidate", client_invalidate},
                                     {"expires_in", client_expires_in},
                                     {"refresh_token", client_refresh_token},
                                     {"close", client_close},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", client_close},
#if LUA_VERSION_NUM >= 504
                                  {"__close", client_close},
#endif
                                  {"__tostring", client_tostring},
                                  {NULL, NULL}};
  /* module table is at -1 */
  luaL_newmetatable(L, LA_CLIENT_MT);
  la_setfuncs(L, meta, 0);
  lua_newtable(L);
  la_setfuncs(L, methods, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, -4, "methods"); /* the Lua layer adds headers() and friends here */
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_pushcfunction(L, client_new);
  lua_setfield(L, -2, "new");
  lua_pushcfunction(L, client_info);
  lua_setfield(L, -2, "info");
  lua_pushcfunction(L, client_request);
  lua_setfield(L, -2, "request");
}
