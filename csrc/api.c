/* api.c - core.request: a LUSID API call through the client's libcurl handle and options. The
 * Lua layer (lusidauth/request.lua) adds the token, the headers and the retry after a 401. */
#include <string.h>

#include "client.h"

#define LA_API_BODY_CAP (64 * 1024 * 1024) /* largest LUSID API response accepted */

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

/* core.token_ok(s): s may follow "Bearer " (visible ASCII, no space). core.value_ok(s): s may be
 * a header value (no control character but tab, no DEL). In C because LuaJIT runs string
 * patterns in its interpreter: scanning a 1 KB token with find() took 10 us a call. */
static int token_ok(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_pushboolean(L, la_header_safe(s, n));
  return 1;
}

static int value_ok(lua_State *L) {
  size_t n, i;
  const char *s = luaL_checklstring(L, 1, &n);
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f) break;
  }
  lua_pushboolean(L, i == n);
  return 1;
}

void la_api_open(lua_State *L) {
  lua_pushcfunction(L, token_ok);
  lua_setfield(L, -2, "token_ok");
  lua_pushcfunction(L, value_ok);
  lua_setfield(L, -2, "value_ok");
}

static int valid_method(const char *m) {
  if (*m == '\0') return 0;
  for (; *m != '\0'; m++)
    if (*m < 'A' || *m > 'Z') return 0;
  return 1;
}

/* core.request(c, method, url, header_lines, body) --> status, headers, body | nil, err.
 * A LUSID API call through the client's libcurl handle and options (TLS, proxy, timeouts). */
int la_client_request(lua_State *L) {
  la_client *c = la_check_open(L);
  const char *method = luaL_checkstring(L, 2);
  const char *url = luaL_checkstring(L, 3);
  size_t body_len = 0, i, nlines;
  const char *body = luaL_optlstring(L, 5, NULL, &body_len);
  struct curl_slist *list = NULL, *tmp;
  la_http_req rq;
  la_error err;
  luaL_checktype(L, 4, LUA_TTABLE);
  if (!valid_method(method)) luaL_argerror(L, 2, "an HTTP method in capitals");
  la_check_url(L, "url", url, c->insecure_http);
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
  la_scratch_free(c);
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
    la_scratch_free(c);
    lua_pushnil(L);
    la_push_error(L, &err);
    return 2;
  }
  la_pushseconds(L, c->res.status);
  push_headers(L, &c->res.headers);
  lua_pushlstring(L, c->res.body.p != NULL ? c->res.body.p : "", c->res.body.n);
  la_scratch_free(c);
  return 3;
}

