/* store.c - the token store: a second tier behind the process's cache, so that processes share
 * one token and one refresh-token chain. This file has what every store shares; the stores
 * themselves (store_file.c, store_redis.c) only move a text blob and hold a lock (store.h).
 *
 * A blob is named by a hash of the identity's non-secret parts; no username or secret appears
 * in a name. Its secret parts (client secret, password, starting refresh token) are checked
 * against a salted PBKDF2 verifier kept in the blob, so a process with a wrong password gets
 * nothing from it, and whoever can read the store still cannot test password guesses cheaply.
 * Expiry crosses processes as wall-clock epoch seconds and is re-anchored on the local
 * monotonic clock when loaded. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "store.h"

#define STORE_MAGIC "lusidauth-store 1"
#define KDF_ITERATIONS 200000 /* about 0.1 s: once per process and identity, not per token */
#define BLOB_MAX 65536
#define REFRESH_TTL_DEFAULT (7 * 86400.0) /* Okta's default: a refresh token unused for 7 days expires */

static void hexify(char *out, const unsigned char *in, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t i;
  for (i = 0; i < n; i++) {
    out[2 * i] = hex[in[i] >> 4];
    out[2 * i + 1] = hex[in[i] & 15];
  }
  out[2 * n] = '\0';
}

static int unhex(unsigned char *out, size_t n, const char *in) {
  size_t i;
  if (strlen(in) != 2 * n) return -1;
  for (i = 0; i < 2 * n; i++) {
    char ch = in[i];
    int v = (ch >= '0' && ch <= '9') ? ch - '0' : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10 : -1;
    if (v < 0) return -1;
    out[i / 2] = (unsigned char)(i % 2 ? (out[i / 2] << 4) | v : v);
  }
  return 0;
}

/* SHA-256 over fields, each followed by its length, so ("ab","c") != ("a","bc"). */
static int sha256_fields(unsigned char out[32], const char *const *p, const size_t *n, int count) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned int len = 0;
  int i, ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
  for (i = 0; ok && i < count; i++) {
    unsigned char sz[8];
    size_t v = n[i], k;
    for (k = 0; k < 8; k++, v >>= 8) sz[k] = (unsigned char)(v & 0xff);
    ok = (n[i] == 0 || EVP_DigestUpdate(ctx, p[i], n[i]) == 1) && EVP_DigestUpdate(ctx, sz, 8) == 1;
  }
  ok = ok && EVP_DigestFinal_ex(ctx, out, &len) == 1 && len == 32;
  EVP_MD_CTX_free(ctx);
  return ok ? 0 : -1;
}

static int verifier(unsigned char out[32], const unsigned char secret_hash[32],
                    const unsigned char salt[16]) {
  return PKCS5_PBKDF2_HMAC((const char *)secret_hash, 32, salt, 16, KDF_ITERATIONS, EVP_sha256(),
                           32, out) == 1
             ? 0
             : -1;
}

/* Wall-clock seconds, with the fraction: what crosses processes. */
static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void la_store_conf_free(la_store_conf *conf) {
  free(conf->kind);
  free(conf->dir);
  free(conf->host);
  free(conf->username);
  free(conf->ca_file);
  free(conf->prefix);
  la_secret_clear(&conf->password);
  memset(conf, 0, sizeof *conf);
}

/* Where the store is, for the identity of the process-wide entry: clients of one identity share
 * one chain only when they share one store (or none). NULL: no store, or out of memory. */
char *la_store_tag(const la_store_conf *conf) {
  char buf[1024];
  if (conf->kind == NULL) return NULL;
  if (strcmp(conf->kind, "redis") == 0)
    snprintf(buf, sizeof buf, "redis %s %d %d %s", conf->host ? conf->host : "127.0.0.1",
             conf->port, conf->db, conf->prefix ? conf->prefix : "");
  else
    snprintf(buf, sizeof buf, "%s %s", conf->kind, conf->dir ? conf->dir : "");
  return strdup(buf);
}

/* Opens the store conf->kind names, for an identity. NULL with err set when refused. */
la_store *la_store_open(const la_store_conf *conf, const la_creds *c, const la_secret *start,
                        la_error *err) {
  la_store *s;
  const char *pub[5], *sec[3];
  size_t pubn[5], secn[3];
  unsigned char name[32];
  char gch = (char)('0' + c->grant);
  int i;
  if ((s = calloc(1, sizeof *s)) == NULL) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: out of memory");
    return NULL;
  }
  pub[0] = &gch, pubn[0] = 1;
  pub[1] = c->token_url, pubn[1] = c->token_url ? strlen(c->token_url) : 0;
  pub[2] = c->client_id, pubn[2] = c->client_id ? strlen(c->client_id) : 0;
  pub[3] = c->username, pubn[3] = c->username ? strlen(c->username) : 0;
  pub[4] = c->scope, pubn[4] = c->scope ? strlen(c->scope) : 0;
  sec[0] = c->client_secret.p, secn[0] = c->client_secret.n;
  sec[1] = c->password.p, secn[1] = c->password.n;
  sec[2] = start->p, secn[2] = start->n;
  for (i = 0; i < 5; i++)
    if (pub[i] == NULL) pub[i] = "";
  for (i = 0; i < 3; i++)
    if (sec[i] == NULL) sec[i] = "";
  if (sha256_fields(name, pub, pubn, 5) != 0 || sha256_fields(s->secret_hash, sec, secn, 3) != 0) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: hashing failed");
    free(s);
    return NULL;
  }
  hexify(s->name, name, 16); /* 128 bits name an identity well enough */
  s->refresh_ttl = conf->refresh_ttl > 0 ? conf->refresh_ttl : REFRESH_TTL_DEFAULT;
  if (strcmp(conf->kind, "file") == 0)
    s->ops = &la_store_file_ops;
  else if (strcmp(conf->kind, "redis") == 0)
    s->ops = &la_store_redis_ops;
  else if (strcmp(conf->kind, "external") != 0) {
    la_error_set(err, LA_ERR_CONFIG, 0,
                 "option 'store' must be \"file\" or \"redis\" (or nil for none)");
    free(s);
    return NULL;
  }
  if (s->ops != NULL && s->ops->open(s, conf, err) != 0) {
    s->ops->close(s); /* what open made before it failed */
    la_wipe(s, sizeof *s);
    free(s);
    return NULL;
  }
  return s;
}

void la_store_close(la_store *s) {
  if (s == NULL) return;
  if (s->ops != NULL) s->ops->close(s);
  la_wipe(s, sizeof *s);
  free(s);
}

int la_store_external(const la_store *s) { return s->ops == NULL; }
const char *la_store_name(const la_store *s) { return s->name; }

int la_store_lock(la_store *s, double wait, double hold, la_error *err) {
  return s->ops->lock(s, wait, hold, err);
}

int la_store_unlock(la_store *s, la_error *err) { return s->ops->unlock(s, err); }

/* Reads a blob into e when it parses and its verifier matches our secrets: the refresh token,
 * and the access token re-anchored on the local clock with the refresh time it was given. A
 * access token e dropped (a 401) is not taken. e NULL: only checks the verifier (the slow KDF,
 * for a new salt). 1: loaded; 0: nothing usable (corrupt, truncated, expired, another
 * identity's secrets). */
int la_store_apply(la_store *s, const char *text, size_t n, la_entry *e, double skew) {
  la_buf b = {NULL, 0, 0};
  unsigned char salt[16], want[32], got[32];
  char *p, *access = NULL, *refresh = NULL;
  double expires_at = -1, refresh_at = -1;
  int have_salt = 0, have_ver = 0, rc = 0;
  if (n == 0 || n > BLOB_MAX || la_buf_add(&b, text, n) != 0) return 0;
  /* line by line, in place; a last line without its newline is a truncated blob */
  p = b.p;
  if (strncmp(p, STORE_MAGIC "\n", sizeof STORE_MAGIC) == 0) {
    p += sizeof STORE_MAGIC;
    while (p < b.p + b.n) {
      char *nl = memchr(p, '\n', (size_t)(b.p + b.n - p)), *v;
      if (nl == NULL) {
        have_ver = 0; /* truncated: trust nothing */
        break;
      }
      *nl = '\0';
      if ((v = strchr(p, ' ')) != NULL) {
        *v++ = '\0';
        if (strcmp(p, "salt") == 0)
          have_salt = unhex(salt, sizeof salt, v) == 0;
        else if (strcmp(p, "verifier") == 0)
          have_ver = unhex(want, sizeof want, v) == 0;
        else if (strcmp(p, "expires_at") == 0)
          expires_at = strtod(v, NULL);
        else if (strcmp(p, "refresh_at") == 0)
          refresh_at = strtod(v, NULL);
        else if (strcmp(p, "access_token") == 0 && la_header_safe(v, strlen(v)))
          access = v;
        else if (strcmp(p, "refresh_token") == 0 && la_header_safe(v, strlen(v)))
          refresh = v;
      }
      p = nl + 1;
    }
  }
  if (have_salt && have_ver) {
    if (s->ok_salt_set && memcmp(s->ok_salt, salt, 16) == 0 &&
        memcmp(s->ok_ver, want, 32) == 0) {
      rc = 1;
    } else if (s->bad_salt_set && memcmp(s->bad_salt, salt, 16) == 0 &&
               memcmp(s->bad_ver, want, 32) == 0) {
      rc = 0; /* checked before: not ours, and the KDF is not run again for it */
    } else if (verifier(got, s->secret_hash, salt) == 0 && CRYPTO_memcmp(got, want, 32) == 0) {
      memcpy(s->ok_salt, salt, 16);
      memcpy(s->ok_ver, want, 32);
      s->ok_salt_set = 1;
      rc = 1;
    } else {
      memcpy(s->bad_salt, salt, 16);
      memcpy(s->bad_ver, want, 32);
      s->bad_salt_set = 1;
    }
  }
  if (rc == 1 && e != NULL) {
    double wall = wall_now(), left = expires_at - wall;
    int64_t now = la_now();
    size_t an = access != NULL ? strlen(access) : 0;
    rc = 0;
    if (refresh != NULL && la_secret_set(&e->refresh, refresh, strlen(refresh)) == 0) rc = 1;
    if (access != NULL && isfinite(expires_at) && left > 1 && left <= LA_MAX_EXPIRES_IN &&
        la_token_hash(access, an) != e->dropped) {
      if (e->access.p != NULL && e->access.n == an && memcmp(e->access.p, access, an) == 0) {
        rc = 1; /* the token we hold: its backoff state stays */
      } else if (la_entry_store(e, access, an, left, now, skew) == 0) {
        /* keep the refresh time the token was given: re-deriving it from the time left would
         * make a stale token fresh again on every load */
        if (isfinite(refresh_at) && refresh_at > 0 && refresh_at < expires_at) {
          double in = refresh_at - wall;
          e->refresh_at = in <= 0 ? now : now + (int64_t)(in * 1e9);
          if (e->refresh_at > e->expires_at) e->refresh_at = e->expires_at;
        }
        rc = 1;
      }
    }
  }
  la_buf_free(&b); /* wipes */
  return rc;
}

/* The state, or the chain when there is no state. Outside any lock: the KDF for a new salt runs
 * here too. 1 got, 0 none, -1 or LA_STORE_DOWN with err set. */
int la_store_fetch(la_store *s, la_buf *out, la_error *err) {
  int rc = s->ops->get(s, LA_SLOT_STATE, out, err);
  if (rc == 1 && la_store_apply(s, out->p, out->n, NULL, 0) == 1) return 1;
  la_buf_free(out);
  if (rc < 0) return rc;
  rc = s->ops->get(s, LA_SLOT_CHAIN, out, err);
  if (rc == 1) (void)la_store_apply(s, out->p, out->n, NULL, 0);
  return rc;
}

/* Checks the verifier of the stored blob without the lock, so that the slow KDF does not run
 * while other processes wait for the lock. Nothing is loaded. */
void la_store_warm(la_store *s) {
  la_buf b = {NULL, 0, 0};
  la_error err;
  if (s->ok_salt_set || s->ops == NULL) return;
  la_error_reset(&err);
  (void)la_store_fetch(s, &b, &err);
  la_buf_free(&b);
}

/* One blob of e's state, with a verifier of our secrets. */
static int encode(la_store *s, const la_entry *e, int with_access, la_buf *out) {
  char hex[65], vhex[65], head[400];
  int64_t now = la_now();
  double left = la_entry_seconds_left(e, now), wall = wall_now();
  double fresh = e->access.p != NULL && e->refresh_at > now ? (double)(e->refresh_at - now) / 1e9 : 0;
  int ok;
  hexify(hex, s->ok_salt, 16);
  hexify(vhex, s->ok_ver, 32);
  if (with_access)
    snprintf(head, sizeof head, "%s\nsalt %s\nverifier %s\nexpires_at %.3f\nrefresh_at %.3f\n",
             STORE_MAGIC, hex, vhex, wall + left, wall + fresh);
  else
    snprintf(head, sizeof head, "%s\nsalt %s\nverifier %s\n", STORE_MAGIC, hex, vhex);
  ok = la_buf_addstr(out, head) == 0;
  if (ok && with_access && e->access.p != NULL)
    ok = la_buf_addstr(out, "access_token ") == 0 && la_buf_add(out, e->access.p, e->access.n) == 0 &&
         la_buf_add(out, "\n", 1) == 0;
  if (ok && e->refresh.p != NULL)
    ok = la_buf_addstr(out, "refresh_token ") == 0 &&
         la_buf_add(out, e->refresh.p, e->refresh.n) == 0 && la_buf_add(out, "\n", 1) == 0;
  return ok ? 0 : -1;
}

/* e's state as blobs to store. Under the entry's lock; the put is not. 0, or -1 with err set. */
int la_store_pack(la_store *s, const la_entry *e, la_store_blobs *out, la_error *err) {
  unsigned char salt[16], ver[32];
  memset(out, 0, sizeof *out);
  if (!s->ok_salt_set) { /* a new salt (usually made by la_store_warm, outside the lock) */
    if (RAND_bytes(salt, sizeof salt) != 1 || verifier(ver, s->secret_hash, salt) != 0) {
      la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot make a verifier");
      return -1;
    }
    memcpy(s->ok_salt, salt, 16);
    memcpy(s->ok_ver, ver, 32);
    s->ok_salt_set = 1;
  }
  out->state_ttl = la_entry_seconds_left(e, la_now()); /* 0: a store with expiry drops it */
  out->chain_ttl = e->refresh.p != NULL ? s->refresh_ttl : 0;
  if (((e->access.p != NULL || e->refresh.p != NULL) && encode(s, e, 1, &out->state) != 0) ||
      (out->chain_ttl > 0 && encode(s, e, 0, &out->chain) != 0)) {
    la_store_blobs_free(out);
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: out of memory");
    return -1;
  }
  return 0;
}

/* Writes what la_store_pack made. 0, -1 or LA_STORE_DOWN with err set. */
int la_store_push(la_store *s, const la_store_blobs *b, la_error *err) {
  int rc = 0;
  if (b->state.n > 0) rc = s->ops->put(s, LA_SLOT_STATE, b->state.p, b->state.n, b->state_ttl, err);
  if (rc == 0 && b->chain.n > 0)
    rc = s->ops->put(s, LA_SLOT_CHAIN, b->chain.p, b->chain.n, b->chain_ttl, err);
  return rc;
}

void la_store_blobs_free(la_store_blobs *b) {
  la_buf_free(&b->state);
  la_buf_free(&b->chain);
}
