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
 *   run:abort()              -- releases it as failed; __gc does the same for a forgotten run
 * With store = "external" (lusidauth.resty's stores: the caller moves the blobs and holds the
 * lock; store.c makes and checks them):
 *   core.store_key(c)        --> the identity's name in the store (hex; no secret in it)
 *   run:store_import(blob[, how]) --> the next action, after loading what another process
 *                                stored (the state blob, else the chain blob; nil: nothing);
 *                                how: "read" (the lock is ours), "down" (unreachable), "busy"
 *                                (another holder kept the lock past the wait); before the
 *                                first request. The rules are client.c's la_store_take.
 *   run:store_dirty()        --> true when the store should get our state (also after finish)
 *   core.store_export(c)     --> state, state_ttl, chain, chain_ttl | nil: the blobs to store
 *                                and their lifetimes in seconds (state nil: the access token
 *                                has expired; chain nil: no refresh token)
 *   core.store_saved(c, ok)  -- whether that state (or a refresh made without the store)
 *                                reached the store; until one does, the store gets ours
 *   core.store_warm(c[, blob]) -- runs the slow verifier KDF now (for the blob's salt, or a new
 *                                one), so that no request pays for it later */
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
  int resave;          /* store_import found the store older than us */
  unsigned long gen0;  /* the entry's generation after store_import */
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

static la_store *check_store(lua_State *L, la_client *c) {
  if (c->store == NULL || !la_store_external(c->store))
    luaL_error(L, "lusidauth: this client was not made with store = \"external\"");
  return c->store;
}

static int run_store_import(lua_State *L) {
  static const char *const hows[] = {"read", "down", "busy", NULL};
  la_run *r = check_run(L);
  size_t n = 0;
  const char *blob = luaL_optlstring(L, 2, NULL, &n);
  int how = luaL_checkoption(L, 3, "read", hows), taken;
  (void)check_store(L, r->c);
  if (r->f.attempts > 0) return luaL_error(L, "lusidauth: store_import comes before the first request");
  taken = la_store_take(r->c, &r->f, &r->a, blob, n, how, &r->gen0);
  r->resave = (taken & LA_TAKE_RESAVE) != 0;
  return push_action(L, r);
}

/* run:store_dirty() --> whether the store should get the state (core.store_export): a new
 * token or refresh token, or the store was behind us. Before or after finish(). */
static int run_store_dirty(lua_State *L) {
  la_run *r = (la_run *)luaL_checkudata(L, 1, LA_RUN_MT);
  int dirty;
  if (r->c->closed) return luaL_error(L, "lusidauth: attempt to use a closed client");
  pthread_mutex_lock(&r->c->sh->lock);
  dirty = la_store_dirty(r->c, &r->f, r->resave, r->gen0);
  pthread_mutex_unlock(&r->c->sh->lock);
  lua_pushboolean(L, dirty);
  return 1;
}

static int store_key(lua_State *L) {
  la_client *c = la_check_open(L);
  lua_pushstring(L, la_store_name(check_store(L, c)));
  return 1;
}

/* core.store_export(c) --> state_blob, state_ttl, chain_blob, chain_ttl | nil[, err] */
static int store_export(lua_State *L) {
  la_client *c = la_check_open(L);
  la_store *st = check_store(L, c);
  la_store_blobs b;
  la_error err;
  int rc = 1;
  la_error_reset(&err);
  pthread_mutex_lock(&c->sh->lock);
  if (c->sh->e.access.p != NULL || c->sh->e.refresh.p != NULL)
    rc = la_store_pack(st, &c->sh->e, &b, &err);
  if (rc == 0) c->sh->refresh_shared = c->sh->e.refresh.p != NULL;
  pthread_mutex_unlock(&c->sh->lock);
  if (rc != 0) {
    lua_pushnil(L);
    if (rc < 0) {
      la_push_error(L, &err);
      return 2;
    }
    return 1;
  }
  if (b.state.n > 0 && b.state_ttl > 0) {
    lua_pushlstring(L, b.state.p, b.state.n);
    lua_pushnumber(L, b.state_ttl);
  } else {
    lua_pushnil(L);
    lua_pushnil(L);
  }
  if (b.chain.n > 0) {
    lua_pushlstring(L, b.chain.p, b.chain.n);
    lua_pushnumber(L, b.chain_ttl);
  } else {
    lua_pushnil(L);
    lua_pushnil(L);
  }
  la_store_blobs_free(&b);
  return 4;
}

/* core.store_saved(c, ok): whether the state store_export gave (or a refresh made without the
 * store) reached the store. Until one does, the next store_import sends ours instead. */
static int store_saved(lua_State *L) {
  la_client *c = la_check_open(L);
  (void)check_store(L, c);
  pthread_mutex_lock(&c->sh->lock);
  c->sh->store_dirty = !lua_toboolean(L, 2);
  pthread_mutex_unlock(&c->sh->lock);
  return 0;
}

static int store_warm(lua_State *L) {
  la_client *c = la_check_open(L);
  la_store *st = check_store(L, c);
  size_t n = 0;
  const char *blob = luaL_optlstring(L, 2, NULL, &n);
  if (blob != NULL && la_store_apply(st, blob, n, NULL, 0) == 1) return 0;
  { /* no blob, or not ours: make our own salt's verifier */
    la_entry scratch;
    la_store_blobs b;
    la_error err;
    memset(&scratch, 0, sizeof scratch);
    la_error_reset(&err);
    if (la_store_pack(st, &scratch, &b, &err) == 0) la_store_blobs_free(&b);
  }
  return 0;
}

static int entry_key(lua_State *L) {
  la_client *c = la_check_open(L);
  lua_pushfstring(L, "lusidauth.entry: %p", (void *)c->sh);
  return 1;
}

void la_step_open(lua_State *L) {
  static const luaL_Reg functions[] = {{"step", step},
                                       {"entry_key", entry_key},
                                       {"store_key", store_key},
                                       {"store_export", store_export},
                                       {"store_warm", store_warm},
                                       {"store_saved", store_saved},
                                       {NULL, NULL}};
  static const luaL_Reg methods[] = {{"request", run_request}, {"response", run_response},
                                     {"fail", run_fail},       {"waited", run_waited},
                                     {"finish", run_finish},   {"abort", run_abort},
                                     {"store_import", run_store_import},
                                     {"store_dirty", run_store_dirty}, {NULL, NULL}};
  luaL_newmetatable(L, LA_RUN_MT);
  lua_pushcfunction(L, run_abort);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);
  la_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  la_setfuncs(L, functions, 0);
}
