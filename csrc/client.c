/* client.c - the lusidauth.client userdata: its methods, __gc/__close/__tostring, and the
 * blocking driver that runs the flow (flow.c) over the libcurl transport (http.c) on the
 * client's entry (cache.c), which clients of the same identity share across Lua states and
 * threads. One refresh per identity is in flight at a time; no lock is held during I/O. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "response.h"

void la_scratch_free(la_client *c) {
  la_buf_free(&c->form);
  la_buf_free(&c->auth);
  la_buf_free(&c->res.body);
  la_buf_free(&c->res.headers);
}

static void client_release(la_client *c) {
  la_scratch_free(c);
  if (c->running) { /* closed mid-refresh (from a hook, or a Lua-driven run): let others go on */
    la_flow f;
    la_action a = {LA_ACT_FAIL, 0, 0};
    memset(&f, 0, sizeof f);
    la_error_set(&f.err, LA_ERR_CONFIG, 0, "the client was closed during its refresh");
    la_run_end(c, &f, a, 0);
  }
  la_shared_release(c->sh);
  c->sh = NULL;
  la_store_close(c->store); /* closing its descriptor also drops a flock held mid-refresh */
  c->store = NULL;
  c->snap_gen = 0;
  la_store_conf_free(&c->store_conf);
  free(c->creds.token_url);
  free(c->creds.client_id);
  free(c->creds.username);
  free(c->creds.scope);
  c->creds.token_url = c->creds.client_id = c->creds.username = c->creds.scope = NULL;
  la_secret_clear(&c->creds.client_secret);
  la_secret_clear(&c->creds.password);
  la_secret_clear(&c->creds.basic);
  la_secret_clear(&c->start);
  la_secret_clear(&c->snap);
  la_http_opts_free(&c->http);
  if (c->curl != NULL) curl_easy_cleanup(c->curl);
  c->curl = NULL;
  c->closed = 1;
}

la_client *la_check_client(lua_State *L) {
  return (la_client *)luaL_checkudata(L, 1, LA_CLIENT_MT);
}

la_client *la_check_open(lua_State *L) {
  la_client *c = la_check_client(L);
  if (c->closed) luaL_error(L, "lusidauth: attempt to use a closed client");
  return c;
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
  la_read_options(L, c, grant, 2);
  if (grant == LA_GRANT_PAT) {
    static const la_secret none = {NULL, 0};
    c->sh = la_shared_get(&c->creds, &none, NULL, 0);
    if (c->sh == NULL || la_entry_store(&c->sh->e, c->start.p, c->start.n, 1, 0, 0) != 0)
      return luaL_error(L, "lusidauth: out of memory");
    c->sh->e.expires_at = c->sh->e.refresh_at = INT64_MAX; /* a PAT does not expire here */
    la_shared_publish(c->sh);
    la_secret_clear(&c->start);
  } else {
    char *tag = la_store_tag(&c->store_conf);
    if (c->store_conf.kind != NULL && tag == NULL) return luaL_error(L, "lusidauth: out of memory");
    c->sh = la_shared_get(&c->creds, &c->start, tag, c->share);
    free(tag);
    if (c->sh == NULL) return luaL_error(L, "lusidauth: out of memory");
    if (c->store_conf.kind != NULL) {
      la_error err;
      la_error_reset(&err);
      c->store = la_store_open(&c->store_conf, &c->creds, &c->start, &err);
      la_secret_clear(&c->store_conf.password); /* the store has its own copy */
      if (c->store == NULL) return luaL_error(L, "lusidauth: %s", err.message);
    }
    la_secret_clear(&c->start); /* the entry has its own copy */
  }
  c->closed = 0;
  return 1;
}

/* ---- serving the token ---- */

/* The token string the fresh path serves: the second user value on 5.4, else a slot of the
 * uservalue table. push_cached_token pushes it; store_cached_token pops the top into it. */
static void push_cached_token(lua_State *L, int cidx) {
#ifdef LA_UV2
  la_getuv2(L, cidx);
#else
  la_getuv(L, cidx);
  lua_rawgeti(L, -1, UV_TOKEN);
  lua_remove(L, -2);
#endif
}

static void store_cached_token(lua_State *L, int cidx) {
#ifdef LA_UV2
  la_setuv2(L, cidx);
#else
  la_getuv(L, cidx);
  lua_insert(L, -2);
  lua_rawseti(L, -2, UV_TOKEN);
  lua_pop(L, 1);
#endif
}

/* With the entry's lock held: copies the token for la_push_snapshot. 0, or -1 (memory). */
int la_take_snapshot(la_client *c) {
  const la_entry *e = &c->sh->e;
  if (la_secret_set(&c->snap, e->access.p, e->access.n) != 0) return -1;
  c->snap_gen = e->gen;
  c->snap_refresh_at = e->refresh_at;
  c->snap_expires_at = e->expires_at;
  return 0;
}

/* Without the lock: turns the copied token into the Lua string the fresh path serves, pushes
 * it and, except for a PAT, the seconds left. Returns the number of values pushed. */
int la_push_snapshot(lua_State *L, la_client *c, int cidx) {
  int64_t now = la_now();
  lua_pushlstring(L, c->snap.p, c->snap.n);
  la_secret_clear(&c->snap);
  lua_pushvalue(L, -1);
  store_cached_token(L, cidx);
  if (c->creds.grant == LA_GRANT_PAT) return 1;
  la_pushseconds(L, now < c->snap_expires_at ? (double)(c->snap_expires_at - now) / 1e9 : 0);
  return 2;
}

int la_push_failure(lua_State *L, const la_error *err) {
  lua_pushnil(L);
  la_push_error(L, err);
  return 2;
}

/* Passes the flow's note, if any, to the log hook. A failing hook is ignored: logging must
 * never break the token flow. */
static void log_note(lua_State *L, la_client *c, int cidx, la_flow *f) {
  if (f->note_level == LA_LOG_NONE) return;
  if (c->has_log) {
    la_getuv(L, cidx);
    lua_rawgeti(L, -1, UV_LOG);
    lua_pushstring(L, la_log_level_name(f->note_level));
    lua_pushstring(L, f->note);
    if (lua_pcall(L, 2, 0, 0) != 0) lua_pop(L, 1);
    lua_pop(L, 1);
  }
  f->note_level = LA_LOG_NONE;
}

/* on_refresh_token(new): runs while this client still holds the refresh in flight, so no other
 * refresh can use the new refresh token before the hook has seen (and stored) it. */
static void call_hook(lua_State *L, la_client *c, int cidx) {
  int have;
  if (!c->has_hook) return;
  pthread_mutex_lock(&c->sh->lock);
  have = c->sh->e.refresh.p != NULL &&
         la_secret_set(&c->snap, c->sh->e.refresh.p, c->sh->e.refresh.n) == 0;
  pthread_mutex_unlock(&c->sh->lock);
  if (!have) return;
  la_getuv(L, cidx);
  lua_rawgeti(L, -1, UV_HOOK);
  lua_pushlstring(L, c->snap.p, c->snap.n);
  la_secret_clear(&c->snap);
  lua_call(L, 1, 0); /* an error propagates: the caller releases the refresh in flight */
  lua_pop(L, 1);
}

/* Builds the request for grant into the client's scratch buffers. */
void la_step_build(lua_State *L, la_client *c, int grant) {
  int built;
  la_scratch_free(c);
  pthread_mutex_lock(&c->sh->lock);
  built = la_flow_request(&c->creds, &c->sh->e, grant, &c->form, &c->auth);
  pthread_mutex_unlock(&c->sh->lock);
  if (built != 0) luaL_error(L, "lusidauth: out of memory");
}

/* Feeds one answer (or transport failure) to the flow: decodes the body, updates the entry,
 * logs, calls the hook. Returns the next action. */
la_action la_step_ingest(lua_State *L, la_client *c, int cidx, la_flow *f, la_response *r,
                         const char *body, size_t n, int64_t sent_at) {
  la_action a;
  if (r->transport.kind == LA_ERR_NONE)
    la_response_decode(L, body, n, r);
  else
    lua_pushnil(L);
  pthread_mutex_lock(&c->sh->lock);
  a = la_flow_response(f, &c->creds, &c->sh->e, r, sent_at, la_now());
  la_shared_publish(c->sh);
  pthread_mutex_unlock(&c->sh->lock);
  lua_pop(L, 1);
  la_scratch_free(c);
  log_note(L, c, cidx, f);
  if (f->rotated && !c->closed) call_hook(L, c, cidx); /* the log hook may have closed it */
  return a;
}

/* Sends one request for the flow over libcurl and feeds the answer back to it. */
static la_action send_one(lua_State *L, la_client *c, la_flow *f, int grant) {
  la_response r;
  int64_t sent_at;
  memset(&r, 0, sizeof r);
  la_error_reset(&r.transport);
  r.retry_after = -1;
  la_step_build(L, c, grant);
  sent_at = la_now();
  if (la_http_post(&c->curl, &c->http, c->creds.token_url, &c->form, &c->auth, &c->res,
                   &r.transport) == 0) {
    la_buf_free(&c->form);
    la_buf_free(&c->auth);
    r.status = c->res.status;
    r.retry_after = la_retry_after(r.status, c->res.retry_after, c->res.rate_reset, time(NULL));
  }
  return la_step_ingest(L, c, 1, f, &r, c->res.body.p, c->res.body.n, sent_at);
}

typedef struct run_ctx {
  la_client *c;
  la_flow f;
  la_action a;
  int store_locked;
  int resave;            /* the store holds an older state than ours: write ours */
  int alone;             /* refreshing without the store */
  unsigned long gen0;    /* the entry's generation when the store was read */
} run_ctx;

/* The requests of one refresh, under lua_pcall: (client, ctx) -> (). Whatever happens in here,
 * the caller releases the refresh in flight afterwards. */
static int run_requests(lua_State *L) {
  run_ctx *x = (run_ctx *)lua_touserdata(L, 2);
  int steps = 0;
  lua_settop(L, 1); /* the client stays at index 1, where the uservalue is read from */
  while (x->a.kind == LA_ACT_SEND || x->a.kind == LA_ACT_WAIT) {
    if (x->c->closed) return luaL_error(L, "lusidauth: the client was closed during its refresh");
    if (++steps > 256) { /* the flow settles far sooner; never loop forever */
      la_error_set(&x->f.err, LA_ERR_PROTOCOL, 0, "token flow did not settle");
      x->a.kind = LA_ACT_FAIL;
      break;
    }
    if (x->a.kind == LA_ACT_WAIT) {
      struct timespec ts;
      ts.tv_sec = (time_t)x->a.wait;
      ts.tv_nsec = (long)((x->a.wait - (double)ts.tv_sec) * 1e9);
      while (nanosleep(&ts, &ts) != 0 && errno == EINTR) { /* interrupted: sleep the rest */
      }
      x->a = la_flow_waited(&x->f);
      continue;
    }
    x->a = send_one(L, x->c, &x->f, x->a.grant);
  }
  return 0;
}

/* Waits, with the lock held, until the refresh in flight ends or the deadline passes. */
static int wait_for_refresh(la_shared *sh, int64_t deadline) {
  struct timespec ts;
  int64_t left = deadline - la_now(), at;
  if (left <= 0) return ETIMEDOUT;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  at = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + left;
  ts.tv_sec = (time_t)(at / 1000000000);
  ts.tv_nsec = (long)(at % 1000000000);
  return pthread_cond_timedwait(&sh->cond, &sh->lock, &ts);
}

/* The first half of a token call. LA_BEGIN_USE: a token was copied for la_push_snapshot (fresh,
 * or still valid while another refresh runs or we back off: no caller waits then).
 * LA_BEGIN_RUN: this client now holds the identity's one refresh in flight, and *a is the
 * flow's first action. LA_BEGIN_BUSY: another refresh is in flight and can_wait is 0.
 * LA_BEGIN_FAIL: *err says why (the awaited refresh failed, or the deadline passed). */
int la_run_begin(la_client *c, int mode, int can_wait, la_flow *f, la_action *a, la_error *err) {
  la_shared *sh = c->sh;
  int64_t now, deadline;
  pthread_mutex_lock(&sh->lock);
  now = la_now();
  deadline = now + (int64_t)(c->creds.deadline * 1e9);
  for (;;) {
    int st = la_entry_state(&sh->e, now);
    unsigned long epoch;
    if (mode == LA_MODE_TOKEN &&
        (st == LA_FRESH || (st == LA_STALE && (sh->in_flight || now < sh->e.retry_at)))) {
      int rc = la_take_snapshot(c);
      pthread_mutex_unlock(&sh->lock);
      return rc == 0 ? LA_BEGIN_USE : LA_BEGIN_OOM;
    }
    /* a refresh whose owner went silent past its own deadline (a Lua-driven run whose
     * coroutine nginx dropped) is taken over rather than waited for forever */
    if (sh->in_flight && now > sh->flight_until) sh->in_flight = 0;
    if (!sh->in_flight) break;
    if (!can_wait) {
      pthread_mutex_unlock(&sh->lock);
      return LA_BEGIN_BUSY;
    }
    epoch = sh->epoch;
    if (wait_for_refresh(sh, deadline) == ETIMEDOUT && sh->in_flight) {
      pthread_mutex_unlock(&sh->lock);
      la_error_set(err, LA_ERR_TIMEOUT, 1,
                   "waited %g s (deadline) for another client's refresh of the same identity",
                   c->creds.deadline);
      return LA_BEGIN_FAIL;
    }
    now = la_now();
    st = la_entry_state(&sh->e, now);
    if (mode == LA_MODE_TOKEN && sh->epoch != epoch && sh->failed && st != LA_FRESH &&
        st != LA_STALE) {
      /* the refresh we waited for failed: report it rather than send another at once */
      *err = sh->last_error;
      pthread_mutex_unlock(&sh->lock);
      return LA_BEGIN_FAIL;
    }
  }
  sh->in_flight = 1;
  sh->flight++;
  sh->flight_until =
      now + (int64_t)((c->creds.deadline + c->http.timeout + c->http.connect_timeout) * 1e9);
  c->running = 1;
  c->flight = sh->flight;
  *a = la_flow_start(f, &c->creds, &sh->e, mode, now, (uint64_t)now ^ (uint64_t)(uintptr_t)c);
  pthread_mutex_unlock(&sh->lock);
  return LA_BEGIN_RUN;
}

/* The second half: releases the refresh in flight, wakes the waiters, and copies the token on
 * success. Returns LA_BEGIN_USE, LA_BEGIN_FAIL (f->err), or LA_BEGIN_OOM. */
int la_run_end(la_client *c, la_flow *f, la_action a, int raised) {
  la_shared *sh = c->sh;
  int result = (raised || a.kind != LA_ACT_USE) ? LA_BEGIN_FAIL : LA_BEGIN_USE;
  pthread_mutex_lock(&sh->lock);
  if (result == LA_BEGIN_USE && sh->e.access.p == NULL) {
    /* another client invalidated the new token before we could read it */
    la_error_set(&f->err, LA_ERR_NETWORK, 1, "the new token was invalidated at once; try again");
    result = LA_BEGIN_FAIL;
  }
  if (sh->in_flight && sh->flight == c->flight) { /* not if it was taken over meanwhile */
    sh->in_flight = 0;
    sh->epoch++;
    sh->failed = result == LA_BEGIN_FAIL;
    if (raised)
      la_error_set(&sh->last_error, LA_ERR_CONFIG, 0, "another client's refresh raised an error");
    else if (sh->failed)
      sh->last_error = f->err;
  }
  c->running = 0;
  if (result == LA_BEGIN_USE && la_take_snapshot(c) != 0) result = LA_BEGIN_OOM;
  pthread_cond_broadcast(&sh->cond);
  pthread_mutex_unlock(&sh->lock);
  la_scratch_free(c);
  return result;
}

/* ---- the token store: consulted before a network refresh, written after one ---- */

/* A line for the log hook. Returns 1 when the hook closed the client: the caller stops. */
static int store_note(lua_State *L, la_client *c, la_flow *f, int level, const char *msg) {
  f->note_level = level;
  snprintf(f->note, sizeof f->note, "%s", msg);
  log_note(L, c, 1, f);
  return c->closed;
}

static int store_down(lua_State *L, la_client *c, run_ctx *x, const la_error *err) {
  char msg[600];
  snprintf(msg, sizeof msg, "%s; this process refreshes on its own until it is back",
           err->message);
  return store_note(L, c, &x->f, LA_LOG_WARN, msg);
}

/* What the store gave, into the entry, and the flow decides again (for client.c's and step.c's
 * drivers alike; takes sh->lock). how: LA_TAKE_READ (blob: what the store holds, NULL for
 * nothing), LA_TAKE_DOWN (unreachable) or LA_TAKE_BUSY (its lock stayed held). Rules:
 * - a state of ours that never reached the store is not replaced by the store's: it gets ours
 *   (LA_TAKE_RESAVE);
 * - without a state from the store, a refresh token other processes may hold (it came from, or
 *   went to, the store) is not rotated blindly, since two holders rotating one token make Okta
 *   revoke the chain: a password client logs in afresh (LA_TAKE_DROPPED); a client with only a
 *   refresh token uses it, except past a busy lock, where it fails;
 * - the flow keeps the call's deadline. *gen: the entry's generation after, or NULL. */
int la_store_take(la_client *c, la_flow *f, la_action *a, const char *blob, size_t n, int how,
                  unsigned long *gen) {
  la_shared *sh = c->sh;
  int r = 0, mode = f->mode;
  pthread_mutex_lock(&sh->lock);
  if (how == LA_TAKE_BUSY && c->creds.grant == LA_GRANT_REFRESH && sh->refresh_shared) {
    pthread_mutex_unlock(&sh->lock);
    la_error_set(&f->err, LA_ERR_TIMEOUT, 1,
                 "token store: another process held the refresh lock past the deadline");
    a->kind = LA_ACT_FAIL;
    return 0;
  }
  if (how == LA_TAKE_READ && sh->store_dirty)
    r = LA_TAKE_RESAVE;
  else if (blob != NULL && la_store_apply(c->store, blob, n, &sh->e, c->creds.refresh_skew) == 1)
    r = LA_TAKE_LOADED;
  if (r == LA_TAKE_LOADED) {
    sh->refresh_shared = sh->e.refresh.p != NULL;
    la_shared_publish(sh);
  } else if (r == 0 && mode == LA_MODE_TOKEN) {
    if (sh->refresh_shared && c->creds.grant == LA_GRANT_PASSWORD && sh->e.refresh.p != NULL) {
      la_secret_clear(&sh->e.refresh);
      r = LA_TAKE_DROPPED;
    }
    sh->refresh_shared = 0;
  }
  *a = la_flow_restart(f, &c->creds, &sh->e, la_now(), (uint64_t)la_now() ^ (uint64_t)(uintptr_t)f);
  if (gen != NULL) *gen = sh->e.gen;
  pthread_mutex_unlock(&sh->lock);
  return r;
}

/* Under sh->lock: whether the store should get the entry's state after a run: a new token or
 * refresh token, or the store was behind us. */
int la_store_dirty(const la_client *c, const la_flow *f, int resave, unsigned long gen0) {
  return resave || (f->attempts > 0 && (c->sh->e.gen != gen0 || f->rotated));
}

/* A line for the log about what la_store_take did. 1 when the hook closed the client. */
static int note_taken(lua_State *L, la_client *c, run_ctx *x, int taken) {
  if (taken & LA_TAKE_DROPPED)
    return store_note(L, c, &x->f, LA_LOG_INFO,
                      "token store: not rotating a refresh token other processes may hold "
                      "without the store's state; logging in with the password instead");
  if ((taken & LA_TAKE_LOADED) && x->a.kind == LA_ACT_USE)
    return store_note(L, c, &x->f, LA_LOG_DEBUG,
                      "token store: used the token another process stored");
  return 0;
}

/* Without the store (unreachable, or its lock held past the wait): what we have decides, and
 * the state we make must reach the store later. */
static int store_alone(lua_State *L, la_client *c, run_ctx *x, int how) {
  x->alone = 1;
  return note_taken(L, c, x, la_store_take(c, &x->f, &x->a, NULL, 0, how, NULL));
}

/* With the process's refresh in flight held: takes the store's refresh lock and reads what
 * another process stored, then lets the flow decide again. While our token is still valid we
 * only try the lock once: a busy lock means another process is refreshing, so the valid token
 * is served. A store that cannot be reached is logged and done without. No lock of ours is held
 * during the store's I/O or its KDF. Returns 0 to go on (x->a is the next action), 1 when x->a
 * settled it or the client was closed (the caller checks c->closed). */
static int store_before(lua_State *L, la_client *c, run_ctx *x, int mode) {
  la_shared *sh = c->sh;
  la_error err;
  la_buf b = {NULL, 0, 0};
  int64_t now = la_now();
  double hold = c->creds.deadline + c->http.connect_timeout + c->http.timeout;
  double wait = (double)(x->f.deadline - now) / 2e9; /* the other half: for our own refresh */
  int got, fetched, taken, valid;
  la_error_reset(&err);
  pthread_mutex_lock(&sh->lock);
  valid = la_entry_state(&sh->e, now) == LA_STALE;
  pthread_mutex_unlock(&sh->lock);
  la_store_warm(c->store); /* the KDF, once per process, before the lock */
  got = la_store_lock(c->store, mode == LA_MODE_TOKEN && valid ? 0 : wait > 0 ? wait : 0, hold,
                      &err);
  if (got == LA_STORE_DOWN) return store_down(L, c, x, &err) || store_alone(L, c, x, LA_TAKE_DOWN);
  if (got < 0) {
    x->f.err = err;
    x->a.kind = LA_ACT_FAIL;
    return 1;
  }
  if (got == 0) {
    if (mode == LA_MODE_TOKEN && valid) {
      pthread_mutex_lock(&sh->lock);
      sh->e.retry_at = now + 1000000000; /* look again in a second, not on every call */
      pthread_mutex_unlock(&sh->lock);
      x->a.kind = LA_ACT_USE;
      return 1;
    }
    return store_note(L, c, &x->f, LA_LOG_WARN,
                      "token store: another process held the refresh lock past the deadline; "
                      "going on without it") ||
           store_alone(L, c, x, LA_TAKE_BUSY);
  }
  x->store_locked = 1;
  fetched = la_store_fetch(c->store, &b, &err);
  if (fetched == -1) {
    la_buf_free(&b);
    x->f.err = err;
    x->a.kind = LA_ACT_FAIL;
    return 1;
  }
  if (fetched == LA_STORE_DOWN && store_down(L, c, x, &err)) return 1;
  taken = la_store_take(c, &x->f, &x->a, fetched == 1 ? b.p : NULL, b.n, LA_TAKE_READ, &x->gen0);
  la_buf_free(&b);
  x->resave = (taken & LA_TAKE_RESAVE) != 0;
  return note_taken(L, c, x, taken);
}

/* After the requests: stores a new state (whatever the hook did: a rotated refresh token must
 * reach the store), outside the entry's lock, and releases the store's lock. Returns 1 when the
 * client was closed by the log hook. */
static int store_after(lua_State *L, la_client *c, run_ctx *x) {
  la_shared *sh = c->sh;
  la_store_blobs blobs;
  la_error err;
  int rc = 1, save;
  if (!x->store_locked) {
    if (x->alone && x->f.attempts > 0) { /* a new state the store has not seen */
      pthread_mutex_lock(&sh->lock);
      sh->store_dirty = 1;
      pthread_mutex_unlock(&sh->lock);
    }
    return 0;
  }
  x->store_locked = 0;
  la_error_reset(&err);
  pthread_mutex_lock(&sh->lock);
  save = la_store_dirty(c, &x->f, x->resave, x->gen0);
  if (save && (rc = la_store_pack(c->store, &sh->e, &blobs, &err)) == 0)
    sh->refresh_shared = sh->e.refresh.p != NULL;
  pthread_mutex_unlock(&sh->lock);
  if (save && rc == 0) {
    rc = la_store_push(c->store, &blobs, &err);
    la_store_blobs_free(&blobs);
  }
  if (save) {
    pthread_mutex_lock(&sh->lock);
    sh->store_dirty = rc != 0;
    pthread_mutex_unlock(&sh->lock);
  }
  if (save && rc != 0 && store_note(L, c, &x->f, LA_LOG_WARN, err.message)) return 1;
  la_error_reset(&err);
  if (la_store_unlock(c->store, &err) != 0) {
    char msg[600];
    snprintf(msg, sizeof msg, "%s; the refresh lock lapses in %.0f s", err.message,
             c->creds.deadline + c->http.connect_timeout + c->http.timeout);
    return store_note(L, c, &x->f, LA_LOG_WARN, msg);
  }
  return 0;
}

/* The slow path of token(), and login() and refresh(), over libcurl: blocking. */
static int run_flow(lua_State *L, la_client *c, int mode) {
  run_ctx *x;
  int rc, result;
  la_error err;

  /* everything that can raise comes before the refresh is taken; the context stays at index 2
   * so that the collector cannot free it while the requests run */
  lua_settop(L, 1);
  x = (run_ctx *)lua_newuserdata(L, sizeof *x);
  memset(x, 0, sizeof *x);
  x->c = c;
  lua_pushcfunction(L, run_requests);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  la_error_reset(&err);

  switch (la_run_begin(c, mode, 1, &x->f, &x->a, &err)) {
  case LA_BEGIN_USE:
    return la_push_snapshot(L, c, 1);
  case LA_BEGIN_FAIL:
    return la_push_failure(L, &err);
  case LA_BEGIN_OOM:
    return luaL_error(L, "lusidauth: out of memory");
  default:
    break;
  }
  if (c->store != NULL && !la_store_external(c->store) && store_before(L, c, x, mode) != 0) {
    lua_pop(L, 3); /* the requests are not run */
    rc = 0;
  } else {
    rc = lua_pcall(L, 2, 0, 0);
  }
  if (c->closed) { /* by a hook: client_release already ended the refresh and the store */
    if (rc != 0) return lua_error(L);
    return luaL_error(L, "lusidauth: the client was closed during its refresh");
  }
  if (c->store != NULL && !la_store_external(c->store) && !c->closed && store_after(L, c, x)) {
    if (rc != 0) return lua_error(L);
    return luaL_error(L, "lusidauth: the client was closed during its refresh");
  }
  result = la_run_end(c, &x->f, x->a, rc != 0);
  if (rc != 0) return lua_error(L); /* the hook's (or a memory) error, now that all is released */
  if (result == LA_BEGIN_OOM) return luaL_error(L, "lusidauth: out of memory");
  if (result == LA_BEGIN_FAIL) return la_push_failure(L, &x->f.err);
  return la_push_snapshot(L, c, 1);
}

/* c:token() --> access_token, expires_in | nil, err. The fresh path takes no lock, does no I/O
 * and allocates nothing: the token string was made when the token changed. */
static int client_token(lua_State *L) {
  la_client *c = (la_client *)lua_touserdata(L, 1);
  int n;
  /* the metatable is this closure's upvalue: cheaper than luaL_checkudata's registry lookup */
  if (c == NULL || !lua_getmetatable(L, 1) || !lua_rawequal(L, -1, lua_upvalueindex(1)) ||
      c->closed)
    c = la_check_open(L); /* raises with the usual message */
  else
    lua_pop(L, 1);
  if ((n = la_push_fresh(L, c)) > 0) return n;
  return run_flow(L, c, LA_MODE_TOKEN);
}

/* The fresh path, shared by token() and core.step (client at index 1): one clock read, one
 * atomic load, no lock, no allocation. Pushes the token (and, but for a PAT, the seconds left)
 * and returns how many values it pushed, or 0 when the slow path must decide. */
int la_push_fresh(lua_State *L, la_client *c) {
  int64_t now = la_now();
  if (c->snap_gen == 0 || now >= c->snap_refresh_at || la_shared_gen(c->sh) != c->snap_gen)
    return 0;
  push_cached_token(L, 1);
  if (c->creds.grant == LA_GRANT_PAT) return 1;
  la_pushseconds(L, (c->snap_expires_at - now) / 1000000000);
  return 2;
}

static la_client *check_oauth(lua_State *L, const char *method) {
  la_client *c = la_check_open(L);
  if (c->creds.grant == LA_GRANT_PAT)
    luaL_error(L, "lusidauth: %s() is not available on a personal access token client", method);
  return c;
}

static int client_login(lua_State *L) { return run_flow(L, check_oauth(L, "login"), LA_MODE_LOGIN); }

static int client_refresh(lua_State *L) {
  return run_flow(L, check_oauth(L, "refresh"), LA_MODE_REFRESH);
}

/* Drops the access token this client was given (after a 401). A newer one that another client
 * of the identity already fetched is kept. */
static int client_invalidate(lua_State *L) {
  la_client *c = la_check_open(L);
  if (c->creds.grant == LA_GRANT_PAT) return 0;
  pthread_mutex_lock(&c->sh->lock);
  if (c->snap_gen != 0 && c->sh->e.gen == c->snap_gen) {
    la_entry_invalidate(&c->sh->e);
    la_shared_publish(c->sh);
  }
  pthread_mutex_unlock(&c->sh->lock);
  c->snap_gen = 0;
  lua_pushnil(L);
  store_cached_token(L, 1);
  return 0;
}

/* Seconds left, or a negative number when there is no usable token. */
static double seconds_left(la_client *c, int *state) {
  int64_t now = la_now();
  double left;
  pthread_mutex_lock(&c->sh->lock);
  *state = la_entry_state(&c->sh->e, now);
  left = la_entry_seconds_left(&c->sh->e, now);
  pthread_mutex_unlock(&c->sh->lock);
  return (*state == LA_FRESH || *state == LA_STALE) ? left : -1;
}

static int client_expires_in(lua_State *L) {
  la_client *c = la_check_open(L);
  int st;
  double left = seconds_left(c, &st);
  if (c->creds.grant == LA_GRANT_PAT || left < 0)
    lua_pushnil(L);
  else
    la_pushseconds(L, left);
  return 1;
}

static int client_refresh_token(lua_State *L) {
  la_client *c = la_check_open(L);
  int have;
  pthread_mutex_lock(&c->sh->lock);
  have = c->sh->e.refresh.p != NULL &&
         la_secret_set(&c->snap, c->sh->e.refresh.p, c->sh->e.refresh.n) == 0;
  pthread_mutex_unlock(&c->sh->lock);
  if (!have) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, c->snap.p, c->snap.n);
  la_secret_clear(&c->snap);
  return 1;
}

/* close, __gc and __close: idempotent; wipes every secret this client holds and drops its
 * share of the entry (the last client of an identity wipes the entry). */
static int client_close(lua_State *L) {
  la_client *c = la_check_client(L);
  client_release(c); /* safe on a half-built or already closed client */
  la_getuv(L, 1);
  if (lua_istable(L, -1)) {
    int slot;
    for (slot = UV_HOOK; slot <= UV_LOG; slot++) {
      if (slot == UV_INFO) continue;
      lua_pushnil(L);
      lua_rawseti(L, -2, slot);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    store_cached_token(L, 1);
  } else {
    lua_pop(L, 1);
  }
  return 0;
}

static int client_tostring(lua_State *L) {
  la_client *c = la_check_client(L);
  if (c->closed) {
    lua_pushliteral(L, "lusidauth.client (closed)");
  } else if (c->creds.grant == LA_GRANT_PAT) {
    lua_pushliteral(L, "lusidauth.client (pat)");
  } else {
    int st;
    double left = seconds_left(c, &st);
    if (left >= 0)
      lua_pushfstring(L, "lusidauth.client (%s, client_id=%s, token valid %d s)",
                      la_grant_name(c->creds.grant), c->creds.client_id, (int)left);
    else
      lua_pushfstring(L, "lusidauth.client (%s, client_id=%s, %s)", la_grant_name(c->creds.grant),
                      c->creds.client_id, st == LA_EMPTY ? "no token" : "token expired");
  }
  return 1;
}

/* core.info(c): the client's non-secret options, for the Lua layer. */
static int client_info(lua_State *L) {
  la_check_open(L);
  la_getuv(L, 1);
  lua_rawgeti(L, -1, UV_INFO);
  return 1;
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
  lua_pushvalue(L, -2); /* the metatable, an upvalue of every method (token() checks it) */
  la_setfuncs(L, methods, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, -4, "methods"); /* the Lua layer adds headers() and request() here */
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_pushcfunction(L, client_new);
  lua_setfield(L, -2, "new");
  lua_pushcfunction(L, client_info);
  lua_setfield(L, -2, "info");
  lua_pushcfunction(L, la_client_request);
  lua_setfield(L, -2, "request");
  la_api_open(L);
}
