/* options.c - reading and checking a client's options: every error names the option, and none
 * ever shows a value (values may be secrets). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"


static const char *const known_options[] = {
    "token_url", "client_id", "client_secret", "username", "password", "refresh_token",
    "access_token", "scope", "refresh_skew", "timeout", "connect_timeout", "retries", "proxy",
    "proxy_username", "proxy_password", "ca_file", "ca_path", "insecure_http", "user_agent",
    "app_name", "api_url", "on_refresh_token", "shared", "correlation_id", "read_timeout", "log",
    "max_retry_wait", "retry_base", "deadline", "store", "store_dir", "redis", NULL};

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
static const char *opt_str_l(lua_State *L, int opts, const char *field, const char *name,
                             size_t *len) {
  const char *s;
  size_t n;
  lua_getfield(L, opts, field);
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

static const char *opt_str(lua_State *L, int opts, const char *name, size_t *len) {
  return opt_str_l(L, opts, name, name, len);
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

static double opt_num_l(lua_State *L, int opts, const char *field, const char *name, double def,
                        double lo, double hi) {
  double v;
  lua_getfield(L, opts, field);
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

static double opt_num(lua_State *L, int opts, const char *name, double def, double lo, double hi) {
  return opt_num_l(L, opts, name, name, def, lo, hi);
}

static int opt_bool_l(lua_State *L, int opts, const char *field, const char *name, int def) {
  int v;
  lua_getfield(L, opts, field);
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

static int opt_bool(lua_State *L, int opts, const char *name, int def) {
  return opt_bool_l(L, opts, name, name, def);
}

static char *dup_or_raise(lua_State *L, const char *s) {
  char *d;
  if (s == NULL) return NULL;
  if ((d = strdup(s)) == NULL) luaL_error(L, "lusidauth: out of memory");
  return d;
}

static int is_loopback(const char *host) {
  return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
         strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0;
}

/* The redis = {...} table of store = "redis". */
static int read_redis(lua_State *L, la_store_conf *sc, int opts) {
  static const char *const known[] = {"host",    "port",   "db",      "username",    "password",
                                      "tls",     "ca_file", "prefix", "timeout", "refresh_ttl",
                                      "insecure", NULL};
  static const char *const labels[] = {
      "redis.host", "redis.port",   "redis.db",      "redis.username",    "redis.password",
      "redis.tls",  "redis.ca_file", "redis.prefix", "redis.timeout", "redis.refresh_ttl",
      "redis.insecure"};
  int t;
  size_t n;
  const char *s;
  lua_getfield(L, opts, "redis");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0; /* 127.0.0.1:6379, database 0 */
  }
  if (!lua_istable(L, -1))
    luaL_error(L, "lusidauth: option 'redis' must be a table, not a %s", luaL_typename(L, -1));
  t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    int i, found = 0;
    if (lua_type(L, -2) == LUA_TSTRING)
      for (i = 0; known[i] != NULL && !found; i++) found = strcmp(lua_tostring(L, -2), known[i]) == 0;
    if (!found)
      luaL_error(L, "lusidauth: unknown option 'redis.%s' (known: host, port, db, username, "
                    "password, tls, ca_file, prefix, timeout, refresh_ttl, insecure)",
                 lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?");
    lua_pop(L, 1);
  }
  sc->host = dup_or_raise(L, opt_str_l(L, t, known[0], labels[0], NULL));
  sc->port = (int)opt_num_l(L, t, known[1], labels[1], 6379, 1, 65535);
  sc->db = (int)opt_num_l(L, t, known[2], labels[2], 0, 0, 1000000);
  sc->username = dup_or_raise(L, opt_str_l(L, t, known[3], labels[3], NULL));
  s = opt_str_l(L, t, known[4], labels[4], &n);
  if (s != NULL && la_secret_set(&sc->password, s, n) != 0) luaL_error(L, "lusidauth: out of memory");
  sc->tls = opt_bool_l(L, t, known[5], labels[5], 0);
  sc->ca_file = dup_or_raise(L, opt_str_l(L, t, known[6], labels[6], NULL));
  sc->prefix = dup_or_raise(L, opt_str_l(L, t, known[7], labels[7], NULL));
  sc->timeout = opt_num_l(L, t, known[8], labels[8], 1.0, 0.001, 3600);
  sc->refresh_ttl = opt_num_l(L, t, known[9], labels[9], 0, 60, LA_MAX_EXPIRES_IN); /* 0: store.c's */
  if (sc->prefix != NULL && strlen(sc->prefix) > 200)
    luaL_error(L, "lusidauth: option 'redis.prefix' must be at most 200 bytes");
  if (sc->username != NULL && sc->password.p == NULL)
    luaL_error(L, "lusidauth: option 'redis.username' needs redis.password");
  /* tokens and the password go over this connection: in clear text only on loopback */
  if (!sc->tls && sc->host != NULL && !is_loopback(sc->host) &&
      !opt_bool_l(L, t, known[10], labels[10], 0))
    luaL_error(L, "lusidauth: option 'redis.host' is not a loopback address: set redis.tls = true "
                  "(or redis.insecure = true to send tokens in clear text)");
  lua_pop(L, 1);
  return 1;
}


/* A URL option: parseable, http(s), no user:password@ in it, https unless loopback/insecure. */
void la_check_url(lua_State *L, const char *name, const char *url, int insecure) {
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

void la_read_options(lua_State *L, la_client *c, int grant, int opts) {
  static const char *const needs[][6] = {
      {"token_url", "client_id", "client_secret", "username", "password", NULL},
      {"token_url", "client_id", "client_secret", "refresh_token", NULL, NULL},
      {"token_url", "client_id", "client_secret", NULL, NULL, NULL},
      {"access_token", NULL, NULL, NULL, NULL, NULL}};
  size_t n = 0;
  const char *s;
  int i, insecure;

  check_known(L, opts);
  for (i = 0; needs[grant][i] != NULL; i++) require_opt(L, opts, grant, needs[grant][i]);
  c->creds.grant = grant;
  insecure = c->insecure_http = opt_bool(L, opts, "insecure_http", 0);
  c->share = opt_bool(L, opts, "shared", 1);
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
    if (s == NULL) /* the table changed under us (an __index that answers once) */
      luaL_error(L, "lusidauth: the pat grant needs option 'access_token'");
    if (n > LA_TOKEN_MAX || !la_header_safe(s, n))
      luaL_error(L, "lusidauth: option 'access_token' must not contain spaces or control "
                    "characters");
    opt_secret(L, opts, "access_token", &c->start);
  } else {
    s = opt_str(L, opts, "token_url", NULL);
    la_check_url(L, "token_url", s, insecure);
    c->creds.token_url = opt_dup(L, opts, "token_url");
    c->creds.client_id = opt_dup(L, opts, "client_id");
    c->creds.username = opt_dup(L, opts, "username");
    c->creds.scope = opt_dup(L, opts, "scope");
    opt_secret(L, opts, "client_secret", &c->creds.client_secret);
    opt_secret(L, opts, "password", &c->creds.password);
    { /* the Basic header is the same for every request: make it once */
      la_buf b = {NULL, 0, 0};
      int rc = la_basic_auth(&b, c->creds.client_id, strlen(c->creds.client_id),
                             c->creds.client_secret.p, c->creds.client_secret.n);
      if (rc == 0) rc = la_secret_set(&c->creds.basic, b.p, b.n);
      la_buf_free(&b);
      if (rc != 0) luaL_error(L, "lusidauth: out of memory");
    }
    s = opt_str(L, opts, "refresh_token", &n);
    if (s != NULL) {
      if (n > LA_TOKEN_MAX || !la_header_safe(s, n))
        luaL_error(L, "lusidauth: option 'refresh_token' must not contain spaces or control "
                      "characters");
      opt_secret(L, opts, "refresh_token", &c->start);
    }
  }
  s = opt_str(L, opts, "proxy", NULL);
  if (s != NULL) la_check_url(L, "proxy", s, 1);
  c->http.proxy = opt_dup(L, opts, "proxy");
  c->http.proxy_username = opt_dup(L, opts, "proxy_username");
  opt_secret(L, opts, "proxy_password", &c->http.proxy_password);
  c->store_conf.kind = opt_dup(L, opts, "store");
  if (c->store_conf.kind != NULL && grant == LA_GRANT_PAT)
    luaL_error(L, "lusidauth: option 'store' does not apply to a personal access token");
  if (c->store_conf.kind != NULL && strcmp(c->store_conf.kind, "file") != 0 &&
      strcmp(c->store_conf.kind, "redis") != 0 && strcmp(c->store_conf.kind, "external") != 0)
    luaL_error(L, "lusidauth: option 'store' must be \"file\" or \"redis\" (or nil for none)");
  c->store_conf.dir = opt_dup(L, opts, "store_dir");
  if (c->store_conf.dir != NULL && (c->store_conf.kind == NULL || strcmp(c->store_conf.kind, "file") != 0))
    luaL_error(L, "lusidauth: option 'store_dir' needs store = \"file\"");
  { /* store = "external" (lusidauth.resty's Redis) takes redis.refresh_ttl from it */
    const char *k = c->store_conf.kind;
    int redis_like = k != NULL && (strcmp(k, "redis") == 0 || strcmp(k, "external") == 0);
    if (read_redis(L, &c->store_conf, opts) && !redis_like)
      luaL_error(L, "lusidauth: option 'redis' needs store = \"redis\"");
  }
  c->http.ca_file = opt_dup(L, opts, "ca_file");
  c->http.ca_path = opt_dup(L, opts, "ca_path");
  c->http.user_agent = opt_dup(L, opts, "user_agent");
  if (c->http.user_agent == NULL && (c->http.user_agent = strdup("lusidauth/" LA_VERSION)) == NULL)
    luaL_error(L, "lusidauth: out of memory");
  if (opt_str(L, opts, "api_url", NULL) != NULL)
    la_check_url(L, "api_url", opt_str(L, opts, "api_url", NULL), insecure);

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

