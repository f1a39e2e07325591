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

void la_store_unlock(la_store *s) { s->ops->unlock(s); }

/* Reads a blob into e (access token re-anchored on the local clock, refresh token) when it
 * parses and its verifier matches our secrets. 1: loaded; 0: nothing usable (corrupt,
 * truncated, expired, or another identity's secrets). */
int la_store_decode(la_store *s, const char *text, size_t n, la_entry *e, double skew) {
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
    } else if (verifier(got, s->secret_hash, salt) == 0 && CRYPTO_memcmp(got, want, 32) == 0) {
      memcpy(s->ok_salt, salt, 16);
      memcpy(s->ok_ver, want, 32);
      s->ok_salt_set = 1;
      rc = 1;
    }
  }
  if (rc == 1 && e != NULL) {
    double wall = wall_now(), left = expires_at - wall;
    int64_t now = la_now();
    rc = 0;
    if (refresh != NULL && la_secret_set(&e->refresh, refresh, strlen(refresh)) == 0) rc = 1;
    if (access != NULL && expires_at > 0 && left > 1 &&
        la_entry_store(e, access, strlen(access), left, now, skew) == 0) {
      /* keep the refresh time the token was given: re-deriving it from the time left would
       * make a stale token fresh again on every load */
      if (refresh_at > 0 && refresh_at < expires_at) {
        double in = refresh_at - wall;
        e->refresh_at = in <= 0 ? now : now + (int64_t)(in * 1e9);
        if (e->refresh_at > e->expires_at) e->refresh_at = e->expires_at;
      }
      rc = 1;
    }
  }
  la_buf_free(&b); /* wipes */
  return rc;
}

/* get + decode. 1 loaded, 0 nothing usable, -1 or LA_STORE_DOWN with err set. */
int la_store_load(la_store *s, la_entry *e, double skew, la_error *err) {
  la_buf b = {NULL, 0, 0};
  int rc = s->ops->get(s, &b, err);
  if (rc == 1) rc = la_store_decode(s, b.p, b.n, e, skew);
  la_buf_free(&b);
  return rc;
}

/* Checks the verifier of the stored blob without the lock, so that the slow KDF does not run
 * while other processes wait for the lock. Nothing is loaded. */
void la_store_warm(la_store *s) {
  la_error err;
  if (s->ok_salt_set || s->ops == NULL) return;
  la_error_reset(&err);
  (void)la_store_load(s, NULL, 0, &err);
}

/* e's state as text, with a verifier of our secrets; *ttl: the access token's seconds left. */
int la_store_encode(la_store *s, const la_entry *e, la_buf *out, double *ttl, la_error *err) {
  char hex[65], vhex[65], head[320];
  unsigned char salt[16], ver[32];
  int64_t now = la_now();
  double left = la_entry_seconds_left(e, now), wall = wall_now();
  double fresh = e->access.p != NULL && e->refresh_at > now ? (double)(e->refresh_at - now) / 1e9 : 0;
  int ok;
  if (s->ok_salt_set) { /* a salt whose verifier we know: no second KDF run */
    memcpy(salt, s->ok_salt, 16);
    memcpy(ver, s->ok_ver, 32);
  } else if (RAND_bytes(salt, sizeof salt) != 1 || verifier(ver, s->secret_hash, salt) != 0) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot make a verifier");
    return -1;
  } else {
    memcpy(s->ok_salt, salt, 16);
    memcpy(s->ok_ver, ver, 32);
    s->ok_salt_set = 1;
  }
  hexify(hex, salt, 16);
  hexify(vhex, ver, 32);
  snprintf(head, sizeof head, "%s\nsalt %s\nverifier %s\nexpires_at %.3f\nrefresh_at %.3f\n",
           STORE_MAGIC, hex, vhex, wall + left, wall + fresh);
  ok = la_buf_addstr(out, head) == 0;
  if (ok && e->access.p != NULL)
    ok = la_buf_addstr(out, "access_token ") == 0 && la_buf_add(out, e->access.p, e->access.n) == 0 &&
         la_buf_add(out, "\n", 1) == 0;
  if (ok && e->refresh.p != NULL)
    ok = la_buf_addstr(out, "refresh_token ") == 0 &&
         la_buf_add(out, e->refresh.p, e->refresh.n) == 0 && la_buf_add(out, "\n", 1) == 0;
  if (!ok) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: out of memory");
    return -1;
  }
  *ttl = left;
  return 0;
}

/* encode + put. 0, -1 or LA_STORE_DOWN with err set. */
int la_store_save(la_store *s, const la_entry *e, la_error *err) {
  la_buf b = {NULL, 0, 0};
  double ttl = 0;
  int rc = la_store_encode(s, e, &b, &ttl, err);
  if (rc == 0) rc = s->ops->put(s, b.p, b.n, ttl, err);
  la_buf_free(&b);
  return rc;
}
