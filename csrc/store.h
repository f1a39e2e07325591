/* store.h - what a token store implements (store_file.c, store_redis.c), and the state every
 * store holds. store.c does the rest: names, the verifier, the state's text, load and save. */
#ifndef LUSIDAUTH_STORE_H
#define LUSIDAUTH_STORE_H

#include "lusidauth.h"

/* A store keeps two text blobs per identity name (slots: the state, and the refresh-token chain,
 * which outlives the state) and one refresh lock per name.
 *   open    connect or check the location; -1 (err set) refuses the configuration
 *   lock    take the refresh lock, trying for up to `wait` seconds; a lock not released within
 *           `hold` seconds lapses (a dead holder must not block the others for ever)
 *           1 held, 0 timed out, -1 err set, LA_STORE_DOWN unreachable (err set)
 *   unlock  release it, only if we still hold it: 0, or -1 / LA_STORE_DOWN (err set; it lapses)
 *   get     a slot's blob: 1 got, 0 none, -1 err set, LA_STORE_DOWN (err set)
 *   put     replace a slot's blob; it may be dropped after `ttl` seconds: 0, -1, LA_STORE_DOWN
 *           (a store without expiry may keep only the state: it holds the chain too)
 *   close   release everything (a held lock too) */
enum { LA_SLOT_STATE = 0, LA_SLOT_CHAIN = 1 };

typedef struct la_store_ops {
  const char *kind;
  int (*open)(la_store *s, const la_store_conf *conf, la_error *err);
  int (*lock)(la_store *s, double wait, double hold, la_error *err);
  int (*unlock)(la_store *s, la_error *err);
  int (*get)(la_store *s, int slot, la_buf *out, la_error *err);
  int (*put)(la_store *s, int slot, const char *p, size_t n, double ttl, la_error *err);
  void (*close)(la_store *s);
} la_store_ops;

struct la_store {
  const la_store_ops *ops;       /* NULL: an external store, driven by the caller (resty) */
  void *impl;
  char name[33];                 /* hex hash of the identity's non-secret parts */
  unsigned char secret_hash[32]; /* SHA-256 of the secret parts: what the verifier is made from */
  unsigned char ok_salt[16];     /* a salt and verifier known to match, to skip the KDF */
  unsigned char ok_ver[32];
  int ok_salt_set;
  unsigned char bad_salt[16];    /* a salt and verifier known not to match (another secret) */
  unsigned char bad_ver[32];
  int bad_salt_set;
  double refresh_ttl;            /* the chain's lifetime in the store */
};

LA_HIDDEN extern const la_store_ops la_store_file_ops;
LA_HIDDEN extern const la_store_ops la_store_redis_ops;

#endif
