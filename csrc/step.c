/* step.c - the flow driven from Lua, one step at a time, for transports that must yield
 * (lusidauth.resty over nginx cosockets). Lua cannot yield across a C call, so the loop that
 * the libcurl driver runs in C (client.c) runs here in Lua: the same state machine, the same
 * shared entry, the same rules; only the I/O and the waiting are the caller's.
 *
 *   core.step(c, mode, peek, epoch) --> "use", token[, expires_in] | "busy", epoch | "refresh"
 *                                | "fail", err
 *                                | "run", run, "send", grant | "run", run, "done"
 *   run:request()            --> url, form_body, authorization_or_nil
 *   run:response(status, retry_after, rate_limit_reset, body) --> "send", grant | "wait", s | "done"
 *   run:fail(kind, message)  --> the same, after a transport failure (network, timeout, tls,
 *                                protocol)
 *   core.entry_key(c)        --> a string naming c's entry: clients with one key share a refresh
 *   run:waited()             --> "send", grant
 *   run:finish()             --> token[, expires_in] | nil, err      (releases the refresh)
 *   run:abort()              -- releases it as failed; __gc does the same for a forgotten run */
#define _POSIX_C_SOURCE 200809L
#include <string.h>
#include <time.h>

#include "client.h"
#include "response.h"

#define LA_RUN_MT "lusidauth.run"

typedef struct la_run {
  la_client *c;
  int done;
  la_flow f;
  la_action a;
  int64_t sent_at;
} la_run;

static const char *const modes[] = {"token", "login", "refresh", NULL};

/* Pushes the run's client (kept in its uservalue table, which Lua 5.1 requires to be a
 * table) and returns its absolute index. */
static int push_client(lua_State *L, int ridx) {
  la_getuv(L, ridx);
  lua_rawgeti(L, -1, 1);
  lua_remove(L, -2);
  return lua_gettop(L);
}

static la_run *check_run(lua_State *L) {
  la_run *r = (la_run *)luaL_checkudata(L, 1, LA_RUN_MT);
  if (r->done) luaL_error(L, "lusidauth: this refresh has finished");
  if (r->c->closed) luaL_error(L, "lusidauth: attempt to use a closed client");
  return r;
}

static int push_action(lua_State *L, la_run *r) {
  switch (r->a.kind) {
  case LA_ACT_SEND:
    lua_pushliteral(L, "send");
    lua_pushstring(L, la_grant_name(r->a.grant));
    return 2;
  case LA_ACT_WAIT:
    lua_pushliteral(L, "wait");
    lua_pushnumber(L, r->a.wait);
    return 2;
  default:
    lua_pushliteral(L, "done");
    return 1;
  }
}

static int step(lua_State *L) {
  la_client *c = la_check_open(L);
  int mode = luaL_checkoption(L, 2, "token", modes);
  int peek = lua_toboolean(L, 3);
  la_flow f;
  la_action a;
  la_error err;
  la_run *r;
  int n;
  if (mode == LA_MODE_TOKEN && (n = la_push_fresh(L, c)) > 0) {
    lua_pushliteral(L, "use"); /* fresh: no lock, no allocation, as c:token() */
    lua_insert(L, -n - 1);
    return n + 1;
  }
  la_error_reset(&err);
  if (peek) { /* what a phase that cannot do I/O may have: a usable token, or nothing */
    int st, usable, busy;
    int64_t now = la_now();
    pthread_mutex_lock(&c->sh->lock);
    st = la_entry_state(&c->sh->e, now);
    usable = st == LA_FRESH || st == LA_STALE;
    if (usable && la_take_snapshot(c) != 0) usable = -1;
    busy = c->sh->in_flight;
    pthread_mutex_unlock(&c->sh->lock);
    if (usable < 0) return luaL_error(L, "lusidauth: out of memory");
    if (!usable) {
      lua_pushstring(L, busy ? "busy" : "refresh");
      return 1;
    }
    lua_pushliteral(L, "use");
    return 1 + la_push_snapshot(L, c, 1);
  }
  if (!lua_isnoneornil(L, 4)) { /* after a wait: did the refresh we waited for fail? */
    unsigned long seen = (unsigned long)luaL_checknumber(L, 4);
    int st, failed;
    pthread_mutex_lock(&c->sh->lock);
    st = la_entry_state(&c->sh->e, la_now());
    failed = mode == LA_MODE_TOKEN && c->sh->epoch != seen && c->sh->failed && !c->sh->in_flight &&
             st != LA_FRESH && st != LA_STALE;
    if (failed) err = c->sh->last_error;
    pthread_mutex_unlock(&c->sh->lock);
    if (failed) { /* report it rather than send another refresh at once */
      lua_pushliteral(L, "fail");
      la_push_error(L, &err);
      return 2;
    }
  }
  /* box first: the run must exist before the refresh is taken */
  r = (la_run *)la_newuserdata(L, sizeof *r);
  memset(r, 0, sizeof *r);
  r->done = 1;
  luaL_getmetatable(L, LA_RUN_MT);
  lua_setmetatable(L, -2);
  lua_createtable(L, 1, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  la_setuv(L, -2);
  r->c = c;
  switch (la_run_begin(c, mode, 0, &f, &a, &err)) {
  case LA_BEGIN_USE:
    lua_pushliteral(L, "use");
    return 1 + la_push_snapshot(L, c, 1);
  case LA_BEGIN_BUSY:
    pthread_mutex_lock(&c->sh->lock);
    n = (int)c->sh->epoch; /* handed back after the wait, to tell whether it failed */
    pthread_mutex_unlock(&c->sh->lock);
    lua_pushliteral(L, "busy");
    lua_pushnumber(L, (lua_Number)(unsigned)n);
    return 2;
  case LA_BEGIN_FAIL:
    lua_pushliteral(L, "fail");
    la_push_error(L, &err);
    return 2;
  case LA_BEGIN_OOM:
    return luaL_error(L, "lusidauth: out of memory");
  default:
    break;
  }
  r->done = 0;
  r->f = f;
  r->a = a;
  lua_pushliteral(L, "run");
  lua_pushvalue(L, -2);
  return 2 + push_action(L, r); /* "done" when it settled at once: finish() says how */
}

static int run_request(lua_State *L) {
  la_run *r = check_run(L);
  la_client *c = r->c;
  if (r->a.kind != LA_ACT_SEND) return luaL_error(L, "lusidauth: no request to send now");
  la_step_build(L, c, r->a.grant);
  r->sent_at = la_now();
  lua_pushstring(L, c->creds.token_url);
  lua_pushlstring(L, c->form.p != NULL ? c->form.p : "", c->form.n);
  if (c->auth.n > 0)
    lua_pushlstring(L, c->auth.p, c->auth.n);
  else
    lua_pushnil(L);
  la_scratch_free(c);
  return 3;
}

static int run_response(lua_State *L) {
  la_run *r = check_run(L);
  long status = (long)luaL_checknumber(L, 2);
  const char *ra = luaL_optstring(L, 3, NULL), *rr = luaL_optstring(L, 4, NULL);
  size_t n;
  const char *body = luaL_optlstring(L, 5, "", &n);
  la_response resp;
  int cidx;
  if (r->a.kind != LA_ACT_SEND) return luaL_error(L, "lusidauth: no request was sent");
  memset(&resp, 0, sizeof resp);
  la_error_reset(&resp.transport);
  resp.status = status;
  resp.retry_after = la_retry_after(status, ra, rr, time(NULL));
  cidx = push_client(L, 1);
  r->a = la_step_ingest(L, r->c, cidx, &r->f, &resp, body, n, r->sent_at);
  return push_action(L, r);
}

static int run_fail(lua_State *L) {
  static const char *const kinds[] = {"network", "timeout", "tls", "protocol", NULL};
  static const int codes[] = {LA_ERR_NETWORK, LA_ERR_TIMEOUT, LA_ERR_TLS, LA_ERR_PROTOCOL};
  la_run *r = check_run(L);
  int k = luaL_checkoption(L, 2, NULL, kinds);
  const char *msg = luaL_checkstring(L, 3);
  la_response resp;
  int cidx;
  if (r->a.kind != LA_ACT_SEND) return luaL_error(L, "lusidauth: no request was sent");
  memset(&resp, 0, sizeof resp);
  la_error_reset(&resp.transport);
  la_error_set(&resp.transport, codes[k], k < 2, "token request to %s failed: %s",
               r->c->creds.token_url, msg);
  resp.retry_after = -1;
  cidx = push_client(L, 1);
  r->a = la_step_ingest(L, r->c, cidx, &r->f, &resp, NULL, 0, r->sent_at);
  return push_action(L, r);
}

static int run_waited(lua_State *L) {
  la_run *r = check_run(L);
  if (r->a.kind != LA_ACT_WAIT) return luaL_error(L, "lusidauth: nothing to wait for");
  r->a = la_flow_waited(&r->f);
  return push_action(L, r);
}

static int run_finish(lua_State *L) {
  la_run *r = check_run(L);
  int result;
  if (r->a.kind == LA_ACT_SEND || r->a.kind == LA_ACT_WAIT)
    return luaL_error(L, "lusidauth: the refresh has not settled");
  r->done = 1;
  result = la_run_end(r->c, &r->f, r->a, 0);
  if (result == LA_BEGIN_OOM) return luaL_error(L, "lusidauth: out of memory");
  if (result == LA_BEGIN_FAIL) return la_push_failure(L, &r->f.err);
  push_client(L, 1);
  return la_push_snapshot(L, r->c, lua_gettop(L));
}

/* abort and __gc: the refresh ends as failed, and the waiters are woken. */
static int run_abort(lua_State *L) {
  la_run *r = (la_run *)luaL_checkudata(L, 1, LA_RUN_MT);
  if (!r->done && !r->c->closed) {
    r->done = 1;
    la_error_set(&r->f.err, LA_ERR_NETWORK, 1, "the refresh was abandoned");
    la_run_end(r->c, &r->f, r->a, 1);
  }
  r->done = 1;
  return 0;
}

static int entry_key(lua_State *L) {
  la_client *c = la_check_open(L);
  lua_pushfstring(L, "lusidauth.entry: %p", (void *)c->sh);
  return 1;
}

void la_step_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"request", run_request}, {"response", run_response},
                                     {"fail", run_fail},       {"waited", run_waited},
                                     {"finish", run_finish},   {"abort", run_abort},
                                     {NULL, NULL}};
  luaL_newmetatable(L, LA_RUN_MT);
  lua_pushcfunction(L, run_abort);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);
  la_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_pushcfunction(L, step);
  lua_setfield(L, -2, "step");
  lua_pushcfunction(L, entry_key);
  lua_setfield(L, -2, "entry_key");
}
