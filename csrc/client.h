/* client.h - the lusidauth.client userdata, shared by client.c, options.c and api.c. */
#ifndef LUSIDAUTH_CLIENT_H
#define LUSIDAUTH_CLIENT_H

#include "compat.h"
#include "http.h"
#include "lusidauth.h"

/* Slots of the client's uservalue table. */
enum { UV_HOOK = 1, UV_TOKEN = 2, UV_INFO = 3, UV_LOG = 4 };

typedef struct la_client {
  int closed;
  int has_hook, has_log;
  int insecure_http;
  int share;              /* join the process-wide entry of this identity */
  int running;            /* this client holds its entry's refresh in flight */
  unsigned long flight;   /* the entry's flight number it holds */
  la_creds creds;
  la_secret start;        /* the refresh token, or the PAT, given in the options */
  la_http_opts http;
  la_shared *sh;          /* the token state: shared with same-identity clients, or private */
  la_store *store;        /* the token store behind it, or NULL */
  la_store_conf store_conf; /* what the options asked for */
  CURL *curl;
  /* what the fresh path serves without taking a lock: the token string in UV_TOKEN is the one
   * of generation snap_gen, valid until snap_refresh_at */
  unsigned long snap_gen;
  int64_t snap_refresh_at, snap_expires_at;
  la_secret snap;         /* the token copied under the lock, pushed to Lua after it */
  /* scratch for one request, owned here so that a raise cannot leak or leave it unwiped */
  la_buf form, auth;
  la_http_result res;
} la_client;

enum { LA_BEGIN_USE = 0, LA_BEGIN_RUN, LA_BEGIN_BUSY, LA_BEGIN_FAIL, LA_BEGIN_OOM };

LA_HIDDEN int la_run_begin(la_client *c, int mode, int can_wait, la_flow *f, la_action *a,
                           la_error *err);
LA_HIDDEN int la_run_end(la_client *c, la_flow *f, la_action a, int raised);
LA_HIDDEN void la_step_build(lua_State *L, la_client *c, int grant);
LA_HIDDEN la_action la_step_ingest(lua_State *L, la_client *c, int cidx, la_flow *f,
                                   la_response *r, const char *body, size_t n, int64_t sent_at);
/* la_store_take: how the store was read; what came of it (bits). */
enum { LA_TAKE_READ = 0, LA_TAKE_DOWN, LA_TAKE_BUSY };
enum { LA_TAKE_LOADED = 1, LA_TAKE_RESAVE = 2, LA_TAKE_DROPPED = 4 };
LA_HIDDEN int la_store_take(la_client *c, la_flow *f, la_action *a, const char *blob, size_t n,
                            int how, unsigned long *gen);
LA_HIDDEN int la_store_dirty(const la_client *c, const la_flow *f, int resave, unsigned long gen0);
LA_HIDDEN int la_push_fresh(lua_State *L, la_client *c);
LA_HIDDEN int la_take_snapshot(la_client *c);
LA_HIDDEN int la_push_snapshot(lua_State *L, la_client *c, int cidx);
LA_HIDDEN int la_push_failure(lua_State *L, const la_error *err);
LA_HIDDEN la_client *la_check_client(lua_State *L);
LA_HIDDEN la_client *la_check_open(lua_State *L);
LA_HIDDEN void la_scratch_free(la_client *c);
LA_HIDDEN void la_read_options(lua_State *L, la_client *c, int grant, int opts);
LA_HIDDEN void la_check_url(lua_State *L, const char *name, const char *url, int insecure);
LA_HIDDEN int la_client_request(lua_State *L);
LA_HIDDEN void la_api_open(lua_State *L);

#endif
