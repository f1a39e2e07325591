/* lusidauth.h - declarations shared by the files of lusidauth.core. Nothing here is exported. */
#ifndef LUSIDAUTH_H
#define LUSIDAUTH_H

#include <stddef.h>
#include <stdint.h>

#define LA_VERSION "0.1.0"
#define LA_CLIENT_MT "lusidauth.client"
#define LA_ERROR_MT "lusidauth.error"
#define LA_BODY_CAP (1024 * 1024)     /* response bodies larger than this are refused */
#define LA_TOKEN_MAX (16 * 1024)      /* longest access or refresh token accepted */
#define LA_DEFAULT_EXPIRES_IN 3600.0  /* when a response has no expires_in (Okta's lifetime) */
#define LA_MAX_EXPIRES_IN (366.0 * 86400.0)

#if defined(__GNUC__)
#define LA_HIDDEN __attribute__((visibility("hidden")))
#else
#define LA_HIDDEN
#endif


/* ---- secret.c: buffers that are wiped when replaced or freed ---- */
typedef struct la_secret {
  char *p;  /* NUL-terminated copy, or NULL */
  size_t n;
} la_secret;

typedef struct la_buf {  /* a growing byte buffer, wiped on free (bodies carry secrets) */
  char *p;
  size_t n, cap;
} la_buf;

LA_HIDDEN void la_wipe(void *p, size_t n);
LA_HIDDEN int la_secret_set(la_secret *s, const char *p, size_t n);
LA_HIDDEN void la_secret_clear(la_secret *s);
LA_HIDDEN int la_buf_add(la_buf *b, const char *p, size_t n);
LA_HIDDEN int la_buf_addstr(la_buf *b, const char *s);
LA_HIDDEN void la_buf_free(la_buf *b);

/* ---- form.c: encodings for token requests ---- */
LA_HIDDEN int la_urlencode(la_buf *b, const char *s, size_t n);
LA_HIDDEN int la_form_add(la_buf *b, const char *name, const char *value, size_t n);
LA_HIDDEN int la_basic_auth(la_buf *b, const char *id, size_t idn, const char *secret, size_t sn);
LA_HIDDEN int la_header_safe(const char *s, size_t n);

/* ---- error.c: the error object ---- */
enum {
  LA_ERR_NONE = 0, LA_ERR_CONFIG, LA_ERR_NETWORK, LA_ERR_TIMEOUT, LA_ERR_TLS,
  LA_ERR_HTTP, LA_ERR_OAUTH, LA_ERR_PROTOCOL
};

typedef struct la_error {
  int kind;
  int retryable;
  long status;           /* 0: no HTTP response */
  double retry_after;    /* < 0: none */
  char message[512];
  char error[64];
  char description[512];
  char uri[256];
} la_error;

LA_HIDDEN void la_error_reset(la_error *e);
LA_HIDDEN void la_error_set(la_error *e, int kind, int retryable, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif

    ;
LA_HIDDEN const char *la_error_kind_name(int kind);
LA_HIDDEN int la_redact(la_buf *b, const char *secret, size_t n);

/* ---- cache.c: the token cache entry and its clock ---- */
enum { LA_EMPTY = 0, LA_FRESH, LA_STALE, LA_EXPIRED };

typedef struct la_entry {
  la_secret access;      /* the access token */
  la_secret refresh;     /* the current refresh token (rotated on every response that has one) */
  int64_t expires_at;    /* la_now() when the access token expires */
  int64_t refresh_at;    /* la_now() from which it is stale: refresh it */
  int64_t retry_at;      /* no refresh attempt before this while a stale token is served */
  int failures;          /* failed refreshes in a row, for the backoff */
  unsigned long gen;     /* bumped whenever the access token changes */
  uint64_t dropped;      /* hash of the access token last invalidated: not to be loaded again */
} la_entry;

LA_HIDDEN int64_t la_now(void);
LA_HIDDEN int la_entry_state(const la_entry *e, int64_t now);
LA_HIDDEN int la_entry_store(la_entry *e, const char *tok, size_t n, double expires_in,
                             int64_t sent_at, double skew);
LA_HIDDEN void la_entry_invalidate(la_entry *e);
LA_HIDDEN void la_entry_clear(la_entry *e);
LA_HIDDEN double la_entry_seconds_left(const la_entry *e, int64_t now);
LA_HIDDEN uint64_t la_token_hash(const char *p, size_t n);

/* ---- flow.c: the token flow as a state machine with no I/O ---- */
enum { LA_GRANT_PASSWORD = 0, LA_GRANT_REFRESH, LA_GRANT_CLIENT_CREDENTIALS, LA_GRANT_PAT };
enum { LA_MODE_TOKEN = 0, LA_MODE_LOGIN, LA_MODE_REFRESH };
enum { LA_ACT_USE = 0, LA_ACT_SEND, LA_ACT_WAIT, LA_ACT_FAIL };

typedef struct la_creds {
  int grant;
  char *token_url, *client_id, *username, *scope;
  la_secret client_secret, password;
  la_secret basic;       /* "Basic ..." for client_id and client_secret, made once */
  /* policy */
  double refresh_skew;   /* seconds: the refresh window is min(refresh_skew, lifetime / 2) */
  int retries;           /* transient failures retried this many times */
  double retry_base;     /* first backoff, seconds; doubled each retry, jittered */
  double max_retry_wait; /* a server-requested wait longer than this is not slept */
  double deadline;       /* seconds for a whole token() call, waits included */
} la_creds;

/* ---- cache.c: the process-wide registry of shared entries ---- */
#include <pthread.h>

typedef struct la_shared {
  pthread_mutex_t lock;   /* guards everything below but refs/next (registry lock) */
  pthread_cond_t cond;    /* signalled when a refresh in flight ends */
  la_entry e;
  int in_flight;          /* a refresh of this identity is in progress somewhere */
  unsigned long flight;   /* which one: bumped each time a refresh is taken */
  int64_t flight_until;   /* la_now() after which a silent refresh counts as abandoned */
  unsigned long epoch;    /* refreshes completed, successful or not */
  int failed;             /* the last one failed, with last_error */
  int refresh_shared;     /* e.refresh came from, or went to, a token store: others may hold it */
  int store_dirty;        /* a new state did not reach the store: it must get ours, not give */
  la_error last_error;
  unsigned long pub_gen;  /* e.gen, for the lock-free fresh check (atomic) */
  /* identity, fixed at creation */
  la_creds id;
  la_secret start;        /* the refresh token a client started from */
  char *tag;              /* where its token store is (NULL: none): part of the identity */
  uint64_t hash;
  int registered;
  unsigned refs;
  struct la_shared *next;
} la_shared;

/* A field of the decoded response: absent, a string, a number, or some other JSON type. */
enum { LA_F_ABSENT = 0, LA_F_STRING, LA_F_NUMBER, LA_F_OTHER };
typedef struct la_field {
  int type;
  const char *p;  /* for strings; valid while the decoded body is alive */
  size_t n;
  double num;
} la_field;

typedef struct la_response {
  la_error transport;    /* kind != NONE: no usable HTTP response (network, timeout, tls, ...) */
  long status;
  double retry_after;    /* seconds, from Retry-After or X-Rate-Limit-Reset; < 0: none */
  const char *body_problem; /* NULL: the body is a JSON object; else why it is not */
  char problem[160];     /* storage for body_problem when it is not a constant */
  la_field access_token, token_type, expires_in, refresh_token, error, error_description, error_uri;
} la_response;

typedef struct la_action {
  int kind;
  int grant;     /* LA_ACT_SEND: which grant to send */
  double wait;   /* LA_ACT_WAIT: seconds */
} la_action;

enum { LA_LOG_NONE = 0, LA_LOG_DEBUG, LA_LOG_INFO, LA_LOG_WARN };

typedef struct la_flow {
  int mode;
  int sent;            /* the grant of the request in flight */
  int fallback_used;   /* the one password login after invalid_grant has been spent */
  int attempts;        /* requests sent in this run */
  int retries;         /* transient failures retried in this run */
  int rotated;         /* the last response replaced the refresh token */
  int64_t deadline;    /* la_now() past which no further attempt starts */
  uint64_t rng;        /* jitter state, seeded by the driver */
  la_error err;
  int note_level;      /* a line for the log hook about the last step, or LA_LOG_NONE */
  char note[768];
} la_flow;

LA_HIDDEN la_shared *la_shared_get(const la_creds *c, const la_secret *start, const char *tag,
                                   int share);
LA_HIDDEN void la_shared_release(la_shared *s);
LA_HIDDEN void la_shared_publish(la_shared *s);
LA_HIDDEN unsigned long la_shared_gen(la_shared *s);

LA_HIDDEN la_action la_flow_start(la_flow *f, const la_creds *c, la_entry *e, int mode, int64_t now,
                                  uint64_t seed);
LA_HIDDEN la_action la_flow_restart(la_flow *f, const la_creds *c, la_entry *e, int64_t now,
                                    uint64_t seed);
LA_HIDDEN la_action la_flow_waited(la_flow *f);
LA_HIDDEN const char *la_log_level_name(int level);
LA_HIDDEN int la_flow_request(const la_creds *c, const la_entry *e, int grant, la_buf *body,
                              la_buf *auth);
LA_HIDDEN la_action la_flow_response(la_flow *f, const la_creds *c, la_entry *e,
                                     const la_response *r, int64_t sent_at, int64_t now);
LA_HIDDEN const char *la_grant_name(int grant);



/* ---- store.c: the token store behind the process's cache (store.h: the interface) ---- */
typedef struct la_store la_store;
typedef struct la_store_conf {
  char *kind;                 /* "file", "redis", or "external" (the caller drives it) */
  char *dir;                  /* file: the directory, NULL for the default */
  char *host, *username, *ca_file, *prefix; /* redis */
  la_secret password;
  int port, db, tls;
  double timeout;
  double refresh_ttl;         /* seconds the refresh-token chain is kept (redis) */
} la_store_conf;
enum { LA_STORE_DOWN = -2 };  /* the store cannot be reached: each process goes on alone */

/* What a save writes: the state (with the access token; kept for the token's life) and the
 * chain (the refresh token only; kept for refresh_ttl, since it outlives the access token). */
typedef struct la_store_blobs {
  la_buf state, chain;
  double state_ttl, chain_ttl;
} la_store_blobs;

LA_HIDDEN la_store *la_store_open(const la_store_conf *conf, const la_creds *c,
                                  const la_secret *start, la_error *err);
LA_HIDDEN void la_store_conf_free(la_store_conf *conf);
LA_HIDDEN char *la_store_tag(const la_store_conf *conf);
LA_HIDDEN void la_store_close(la_store *s);
LA_HIDDEN int la_store_external(const la_store *s);
LA_HIDDEN const char *la_store_name(const la_store *s);
LA_HIDDEN int la_store_lock(la_store *s, double wait, double hold, la_error *err);
LA_HIDDEN int la_store_unlock(la_store *s, la_error *err);
LA_HIDDEN int la_store_fetch(la_store *s, la_buf *out, la_error *err);
LA_HIDDEN int la_store_apply(la_store *s, const char *p, size_t n, la_entry *e, double skew);
LA_HIDDEN int la_store_pack(la_store *s, const la_entry *e, la_store_blobs *out, la_error *err);
LA_HIDDEN int la_store_push(la_store *s, const la_store_blobs *b, la_error *err);
LA_HIDDEN void la_store_blobs_free(la_store_blobs *b);
LA_HIDDEN void la_store_warm(la_store *s);

/* ---- the Lua side of each file ---- */
struct lua_State;
LA_HIDDEN void la_error_open(struct lua_State *L);
LA_HIDDEN void la_push_error(struct lua_State *L, const la_error *e);
LA_HIDDEN void la_client_open(struct lua_State *L);
LA_HIDDEN void la_step_open(struct lua_State *L);
#endif
