/* response.c - turns a token endpoint's answer (status, rate-limit headers, body) into the
 * la_response the flow reads. The body is decoded by lua-cjson (cjson.safe), never by hand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "compat.h"
#include "lusidauth.h"
#include "response.h"

#define DECODE_KEY "lusidauth.cjson_decode"

/* Keeps cjson.safe's decode in the registry; raises if lua-cjson is missing. */
void la_response_open(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson.safe");
  if (lua_pcall(L, 1, 1, 0) != 0)
    luaL_error(L, "lusidauth.core needs lua-cjson (cjson.safe): %s", lua_tostring(L, -1));
  lua_getfield(L, -1, "decode");
  if (!lua_isfunction(L, -1)) luaL_error(L, "lusidauth.core: cjson.safe has no decode");
  lua_setfield(L, LUA_REGISTRYINDEX, DECODE_KEY);
  lua_pop(L, 1);
}

/* Seconds the server asked us to wait: Retry-After (delta-seconds or an HTTP date), or, on a
 * 429, Okta's X-Rate-Limit-Reset (UTC epoch seconds). -1 when neither says. */
/* Whole seconds, digits only (RFC 9110 delta-seconds), or -1. */
static double digits(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 15 || strspn(s, "0123456789") != n) return -1;
  return strtod(s, NULL);
}

double la_retry_after(long status, const char *retry_after, const char *rate_reset, time_t now) {
  double v;
  if (retry_after != NULL && retry_after[0] != '\0') {
    if ((v = digits(retry_after)) >= 0) return v;
    {
      time_t t = curl_getdate(retry_after, NULL);
      if (t != (time_t)-1) return t > now ? (double)(t - now) : 0;
    }
  }
  if (status == 429 && rate_reset != NULL && (v = digits(rate_reset)) >= 0)
    return v > (double)now ? v - (double)now : 0;
  return -1;
}

static void field(lua_State *L, int t, const char *name, la_field *f) {
  memset(f, 0, sizeof *f);
  lua_getfield(L, t, name);
  switch (lua_type(L, -1)) {
  case LUA_TNIL:
  case LUA_TLIGHTUSERDATA: /* cjson.null */
    f->type = LA_F_ABSENT;
    break;
  case LUA_TSTRING:
    f->type = LA_F_STRING;
    f->p = lua_tolstring(L, -1, &f->n); /* stays valid: the table on the stack holds it */
    break;
  case LUA_TNUMBER:
    f->type = LA_F_NUMBER;
    f->num = (double)lua_tonumber(L, -1);
    break;
  default:
    f->type = LA_F_OTHER;
    break;
  }
  lua_pop(L, 1);
}

static char first_char(const char *p, size_t n) {
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) i++;
  return i < n ? p[i] : '\0';
}

/* Decodes body into r, leaving one value on the stack (the decoded table, or nil) that keeps
 * r's strings alive: pop it once the flow has read r. */
void la_response_decode(lua_State *L, const char *body, size_t n, la_response *r) {
  int t;
  r->body_problem = NULL;
  memset(&r->access_token, 0, sizeof r->access_token);
  r->token_type = r->expires_in = r->refresh_token = r->access_token;
  r->error = r->error_description = r->error_uri = r->access_token;
  if (n == 0) {
    r->body_problem = "the body is empty";
    lua_pushnil(L);
    return;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, DECODE_KEY);
  lua_pushlstring(L, body, n);
  if (lua_pcall(L, 1, 2, 0) != 0) { /* cjson.safe does not raise, but be sure */
    lua_pop(L, 1);
    r->body_problem = "the body could not be decoded";
    lua_pushnil(L);
    return;
  }
  if (lua_isnil(L, -2)) {
    snprintf(r->problem, sizeof r->problem, "the body is not JSON (%s)",
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "decode error");
    r->body_problem = r->problem;
    lua_pop(L, 1); /* keep the nil */
    return;
  }
  lua_pop(L, 1);
  t = lua_gettop(L);
  if (!lua_istable(L, t)) {
    r->body_problem = "the body is a JSON scalar, not an object";
    return;
  }
  field(L, t, "access_token", &r->access_token);
  field(L, t, "token_type", &r->token_type);
  field(L, t, "expires_in", &r->expires_in);
  field(L, t, "refresh_token", &r->refresh_token);
  field(L, t, "error", &r->error);
  field(L, t, "error_description", &r->error_description);
  field(L, t, "error_uri", &r->error_uri);
  if (first_char(body, n) == '[') r->body_problem = "the body is a JSON array, not an object";
}
