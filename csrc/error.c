/* error.c - the error object: a table with kind, message, status, error, error_description,
 * error_uri, retry_after and retryable, whose __tostring gives the message. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "compat.h"
#include "lusidauth.h"

static const char *const kind_names[] = {"none", "config", "network", "timeout", "tls",
                                         "http", "oauth", "protocol"};

const char *la_error_kind_name(int kind) {
  if (kind < 0 || kind > LA_ERR_PROTOCOL) return "none";
  return kind_names[kind];
}

void la_error_reset(la_error *e) {
  memset(e, 0, sizeof *e);
  e->retry_after = -1;
}

void la_error_set(la_error *e, int kind, int retryable, const char *fmt, ...) {
  va_list ap;
  e->kind = kind;
  e->retryable = retryable;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
}

/* Replaces each occurrence of the secret in b by "[redacted]". 0, or -1 (memory). */
int la_redact(la_buf *b, const char *secret, size_t n) {
  la_buf out = {NULL, 0, 0};
  size_t i = 0;
  if (secret == NULL || n < 4 || b->n < n) return 0; /* shorter values are ordinary words */
  if (la_buf_add(&out, "", 0) != 0) return -1;
  while (i < b->n) {
    if (i + n <= b->n && memcmp(b->p + i, secret, n) == 0) {
      if (la_buf_addstr(&out, "[redacted]") != 0) goto fail;
      i += n;
    } else {
      if (la_buf_add(&out, b->p + i, 1) != 0) goto fail;
      i++;
    }
  }
  la_buf_free(b);
  *b = out;
  return 0;
fail:
  la_buf_free(&out);
  return -1;
}

static void set_str(lua_State *L, const char *k, const char *v) {
  if (v[0] == '\0') return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

void la_push_error(lua_State *L, const la_error *e) {
  lua_createtable(L, 0, 8);
  lua_pushstring(L, la_error_kind_name(e->kind));
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, e->message);
  lua_setfield(L, -2, "message");
  if (e->status > 0) {
    la_pushseconds(L, e->status);
    lua_setfield(L, -2, "status");
  }
  set_str(L, "error", e->error);
  set_str(L, "error_description", e->description);
  set_str(L, "error_uri", e->uri);
  if (e->retry_after >= 0) {
    lua_pushnumber(L, e->retry_after);
    lua_setfield(L, -2, "retry_after");
  }
  lua_pushboolean(L, e->retryable);
  lua_setfield(L, -2, "retryable");
  luaL_getmetatable(L, LA_ERROR_MT);
  lua_setmetatable(L, -2);
}

static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "message");
  if (!lua_isstring(L, -1)) lua_pushliteral(L, "lusidauth error");
  return 1;
}

/* err .. "x" and "x" .. err both work. */
static int error_concat(lua_State *L) {
  int i;
  for (i = 1; i <= 2; i++) {
    if (lua_istable(L, i)) {
      lua_getfield(L, i, "message");
    } else {
      lua_pushvalue(L, i);
    }
    if (!lua_isstring(L, -1)) return luaL_error(L, "attempt to concatenate a %s value", luaL_typename(L, i));
  }
  lua_concat(L, 2);
  return 1;
}

void la_error_open(lua_State *L) {
  if (luaL_newmetatable(L, LA_ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, error_concat);
    lua_setfield(L, -2, "__concat");
  }
  lua_pop(L, 1);
}
