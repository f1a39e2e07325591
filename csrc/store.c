/* store.c - the token store: a second tier behind the process's cache, so that short-lived
 * processes share one token and one refresh-token chain. This file has the interface and the
 * file store ($XDG_CACHE_HOME/lusidauth, or ~/.cache/lusidauth).
 *
 * A file is named by a hash of the identity's non-secret parts; no username or secret appears in
 * a name. Its secret parts (client secret, password, starting refresh token) are checked against
 * a salted PBKDF2 verifier kept in the file, so a process with a wrong password gets nothing from
 * it, and whoever can read the directory still cannot test password guesses cheaply. Expiry
 * crosses processes as wall-clock epoch seconds and is re-anchored on the local monotonic clock
 * when loaded. Writes go to a temporary file, fsync'd and renamed into place; flock on a
 * separate lock file is the refresh lock, released by the kernel if its holder dies. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "lusidauth.h"

#define STORE_MAGIC "lusidauth-store 1"
#define KDF_ITERATIONS 200000 /* about 0.1 s: once per process and file, not per token */

struct la_store {
  char dir[PATH_MAX - 128]; /* room for "/<32 hex>.token" in the paths below */
  char path[PATH_MAX];      /* the state file */
  char lock_path[PATH_MAX];
  int lock_fd;
  unsigned char secret_hash[32]; /* SHA-256 of the secret parts: what the verifier is made from */
  unsigned char ok_salt[16];     /* a salt and verifier known to match, to skip the KDF */
  unsigned char ok_ver[32];
  int ok_salt_set;
};

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

/* The directory, made 0700 if missing; refused if another user owns it or others can read it. */
static int check_dir(const char *dir, la_error *err) {
  struct stat st;
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot create %s: %s", dir, strerror(errno));
    return -1;
  }
  if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: %s is not a directory", dir);
    return -1;
  }
  if (st.st_uid != geteuid()) {
    la_error_set(err, LA_ERR_CONFIG, 0,
                 "token store: refusing %s: it is owned by uid %ld, not by this user (uid %ld)", dir,
                 (long)st.st_uid, (long)geteuid());
    return -1;
  }
  if ((st.st_mode & 077) != 0) {
    la_error_set(err, LA_ERR_CONFIG, 0,
                 "token store: refusing %s: its mode is %04o; it must be 0700 (chmod 700 %s)", dir,
                 (unsigned)(st.st_mode & 0777), dir);
    return -1;
  }
  return 0;
}

/* Opens the file store for an identity. dir: NULL for the default location. */
la_store *la_store_open_file(const char *dir, const la_creds *c, const la_secret *start,
                             la_error *err) {
  la_store *s;
  const char *home = getenv("HOME"), *xdg = getenv("XDG_CACHE_HOME");
  const char *pub[5], *sec[3];
  size_t pubn[5], secn[3];
  unsigned char name[32];
  char hex[65];
  char gch = (char)('0' + c->grant);
  int i;
  if ((s = calloc(1, sizeof *s)) == NULL) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: out of memory");
    return NULL;
  }
  s->lock_fd = -1;
  if (dir != NULL)
    snprintf(s->dir, sizeof s->dir, "%s", dir);
  else if (xdg != NULL && xdg[0] == '/')
    snprintf(s->dir, sizeof s->dir, "%s/lusidauth", xdg);
  else if (home != NULL && home[0] == '/')
    snprintf(s->dir, sizeof s->dir, "%s/.cache/lusidauth", home);
  else {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: no XDG_CACHE_HOME or HOME; set store_dir");
    free(s);
    return NULL;
  }
  if (dir == NULL && xdg == NULL) { /* ~/.cache may not exist yet: make it like XDG does */
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s/.cache", home);
    if (mkdir(parent, 0700) != 0 && errno != EEXIST) {
      la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot create %s: %s", parent,
                   strerror(errno));
      free(s);
      return NULL;
    }
  }
  if (check_dir(s->dir, err) != 0) {
    free(s);
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
  hexify(hex, name, 16); /* 128 bits name a file well enough */
  snprintf(s->path, sizeof s->path, "%s/%s.token", s->dir, hex);
  snprintf(s->lock_path, sizeof s->lock_path, "%s/%s.lock", s->dir, hex);
  return s;
}

void la_store_close(la_store *s) {
  if (s == NULL) return;
  if (s->lock_fd >= 0) close(s->lock_fd);
  la_wipe(s, sizeof *s);
  free(s);
}

/* Takes the refresh lock, waiting up to wait seconds. 1: held; 0: timed out; -1: err set. */
int la_store_lock(la_store *s, double wait, la_error *err) {
  int64_t until = la_now() + (int64_t)(wait * 1e9);
  if (s->lock_fd < 0) {
    s->lock_fd = open(s->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (s->lock_fd < 0) {
      la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot open %s: %s", s->lock_path,
                   strerror(errno));
      return -1;
    }
  }
  for (;;) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) == 0) return 1;
    if (errno != EWOULDBLOCK && errno != EINTR) {
      la_error_set(err, LA_ERR_CONFIG, 0, "token store: flock %s: %s", s->lock_path,
                   strerror(errno));
      return -1;
    }
    if (la_now() >= until) return 0;
    nanosleep(&ts, NULL);
  }
}

void la_store_unlock(la_store *s) {
  if (s->lock_fd >= 0) flock(s->lock_fd, LOCK_UN);
}

/* Reads the whole file (at most 64 KiB) into b. 1: read; 0: no file; -1: err set. */
static int read_file(const char *path, la_buf *b, la_error *err) {
  char chunk[4096];
  struct stat st;
  ssize_t n;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return 0;
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot open %s: %s", path, strerror(errno));
    return -1;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
      (st.st_mode & 077) != 0) {
    close(fd);
    la_error_set(err, LA_ERR_CONFIG, 0,
                 "token store: refusing %s: it must be a 0600 file owned by this user", path);
    return -1;
  }
  while ((n = read(fd, chunk, sizeof chunk)) > 0 && b->n < 65536)
    if (la_buf_add(b, chunk, (size_t)n) != 0) break;
  la_wipe(chunk, sizeof chunk);
  close(fd);
  return 1;
}

/* Reads the state into e (access token re-anchored on the local clock, refresh token) when the
 * file exists, parses, and its verifier matches our secrets. 1: loaded; 0: nothing usable (no
 * file, a corrupt or truncated one, another identity's secrets); -1: err set (a file we must
 * not trust: wrong owner or mode). */
int la_store_load(la_store *s, la_entry *e, double skew, la_error *err) {
  la_buf b = {NULL, 0, 0};
  unsigned char salt[16], want[32], got[32];
  char *p, *access = NULL, *refresh = NULL;
  double expires_at = -1;
  int have_salt = 0, have_ver = 0, rc = read_file(s->path, &b, err);
  if (rc <= 0) return rc;
  rc = 0;
  /* line by line, in place; a last line without its newline is a truncated file */
  p = b.n > 0 ? b.p : NULL;
  if (p != NULL && strncmp(p, STORE_MAGIC "\n", sizeof STORE_MAGIC) == 0) {
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
  if (rc == 1) {
    double left = expires_at - (double)time(NULL);
    rc = 0;
    if (refresh != NULL && la_secret_set(&e->refresh, refresh, strlen(refresh)) == 0) rc = 1;
    if (access != NULL && expires_at > 0 && left > 1 &&
        la_entry_store(e, access, strlen(access), left, la_now(), skew) == 0)
      rc = 1;
  }
  la_buf_free(&b); /* wipes */
  return rc;
}

/* Checks the verifier of the current file without the lock, so that the slow KDF does not run
 * while other processes wait for the lock. Nothing is loaded. */
void la_store_warm(la_store *s) {
  la_entry scratch;
  la_error err;
  if (s->ok_salt_set) return;
  memset(&scratch, 0, sizeof scratch);
  la_error_reset(&err);
  (void)la_store_load(s, &scratch, 0, &err);
  la_entry_clear(&scratch);
}

/* Writes e's state: to a temporary 0600 file, fsync'd, renamed over the old one. 0, or -1. */
int la_store_save(la_store *s, const la_entry *e, la_error *err) {
  char tmp[PATH_MAX + 32], hex[65], vhex[65], head[256];
  unsigned char salt[16], ver[32];
  double expires_at = (double)time(NULL) + la_entry_seconds_left(e, la_now());
  la_buf b = {NULL, 0, 0};
  size_t off = 0;
  int fd, ok;
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
  snprintf(head, sizeof head, "%s\nsalt %s\nverifier %s\nexpires_at %.3f\n", STORE_MAGIC, hex, vhex,
           expires_at);
  ok = la_buf_addstr(&b, head) == 0;
  if (ok && e->access.p != NULL)
    ok = la_buf_addstr(&b, "access_token ") == 0 && la_buf_add(&b, e->access.p, e->access.n) == 0 &&
         la_buf_add(&b, "\n", 1) == 0;
  if (ok && e->refresh.p != NULL)
    ok = la_buf_addstr(&b, "refresh_token ") == 0 &&
         la_buf_add(&b, e->refresh.p, e->refresh.n) == 0 && la_buf_add(&b, "\n", 1) == 0;
  snprintf(tmp, sizeof tmp, "%s.%ld.tmp", s->path, (long)getpid());
  fd = ok ? open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600) : -1;
  while (fd >= 0 && off < b.n) {
    ssize_t w = write(fd, b.p + off, b.n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
  ok = fd >= 0 && off == b.n && fsync(fd) == 0;
  if (fd >= 0) ok = close(fd) == 0 && ok;
  la_buf_free(&b);
  if (!ok || rename(tmp, s->path) != 0) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot write %s: %s", s->path,
                 strerror(errno));
    unlink(tmp);
    return -1;
  }
  return 0;
}
