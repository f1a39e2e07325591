/* store_file.c - the file store: $XDG_CACHE_HOME/lusidauth, or ~/.cache/lusidauth, for
 * short-lived processes on one machine. The directory must be 0700 and ours, files are 0600.
 * Writes go to a temporary file, fsync'd and renamed into place; flock on a separate lock file
 * is the refresh lock, released by the kernel if its holder dies (so `hold` is not needed). */
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

#include "store.h"

typedef struct file_store {
  char dir[PATH_MAX - 128]; /* room for "/<32 hex>.token" in the paths below */
  char path[PATH_MAX];      /* the state file: the state and the chain (no expiry here) */
  char lock_path[PATH_MAX];
  int lock_fd;
  pid_t pid;                /* whose lock_fd: a forked child opens its own (flock is per open) */
} file_store;

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

static int file_open(la_store *s, const la_store_conf *conf, la_error *err) {
  const char *home = getenv("HOME"), *xdg = getenv("XDG_CACHE_HOME");
  file_store *f = calloc(1, sizeof *f);
  if (f == NULL) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: out of memory");
    return -1;
  }
  f->lock_fd = -1;
  s->impl = f;
  if (conf->dir != NULL && strlen(conf->dir) >= sizeof f->dir) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: store_dir is too long");
    goto fail;
  }
  if (conf->dir != NULL)
    snprintf(f->dir, sizeof f->dir, "%s", conf->dir);
  else if (xdg != NULL && xdg[0] == '/')
    snprintf(f->dir, sizeof f->dir, "%s/lusidauth", xdg);
  else if (home != NULL && home[0] == '/')
    snprintf(f->dir, sizeof f->dir, "%s/.cache/lusidauth", home);
  else {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: no XDG_CACHE_HOME or HOME; set store_dir");
    goto fail;
  }
  if (conf->dir == NULL && xdg == NULL) { /* ~/.cache may not exist yet: make it like XDG does */
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s/.cache", home);
    if (mkdir(parent, 0700) != 0 && errno != EEXIST) {
      la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot create %s: %s", parent,
                   strerror(errno));
      goto fail;
    }
  }
  if (check_dir(f->dir, err) != 0) goto fail;
  snprintf(f->path, sizeof f->path, "%s/%s.token", f->dir, s->name);
  snprintf(f->lock_path, sizeof f->lock_path, "%s/%s.lock", f->dir, s->name);
  return 0;
fail:
  free(f);
  s->impl = NULL;
  return -1;
}

static void file_close(la_store *s) {
  file_store *f = (file_store *)s->impl;
  if (f == NULL) return;
  if (f->lock_fd >= 0) close(f->lock_fd); /* drops a flock held mid-refresh */
  free(f);
  s->impl = NULL;
}

static int file_lock(la_store *s, double wait, double hold, la_error *err) {
  file_store *f = (file_store *)s->impl;
  int64_t until = la_now() + (int64_t)(wait * 1e9);
  (void)hold;
  if (f->lock_fd >= 0 && f->pid != getpid()) { /* forked: the parent's descriptor is not ours */
    close(f->lock_fd);
    f->lock_fd = -1;
  }
  if (f->lock_fd < 0) {
    f->pid = getpid();
    f->lock_fd = open(f->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (f->lock_fd < 0) {
      la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot open %s: %s", f->lock_path,
                   strerror(errno));
      return -1;
    }
  }
  for (;;) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    if (flock(f->lock_fd, LOCK_EX | LOCK_NB) == 0) return 1;
    if (errno != EWOULDBLOCK && errno != EINTR) {
      la_error_set(err, LA_ERR_CONFIG, 0, "token store: flock %s: %s", f->lock_path,
                   strerror(errno));
      return -1;
    }
    if (la_now() >= until) return 0;
    nanosleep(&ts, NULL);
  }
}

static int file_unlock(la_store *s, la_error *err) {
  file_store *f = (file_store *)s->impl;
  (void)err;
  if (f->lock_fd >= 0) flock(f->lock_fd, LOCK_UN);
  return 0;
}

/* Reads the whole file (at most 64 KiB) into b. 1: read; 0: no file; -1: err set (a file we
 * must not trust: wrong owner or mode). */
static int file_get(la_store *s, int slot, la_buf *b, la_error *err) {
  file_store *f = (file_store *)s->impl;
  char chunk[4096];
  struct stat st;
  ssize_t n;
  int fd;
  if (slot != LA_SLOT_STATE) return 0; /* the state file holds the chain */
  fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT) return 0;
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot open %s: %s", f->path,
                 strerror(errno));
    return -1;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
      (st.st_mode & 077) != 0) {
    close(fd);
    la_error_set(err, LA_ERR_CONFIG, 0,
                 "token store: refusing %s: it must be a 0600 file owned by this user", f->path);
    return -1;
  }
  while (b->n < 65536) {
    n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || la_buf_add(b, chunk, (size_t)n) != 0) break;
  }
  la_wipe(chunk, sizeof chunk);
  close(fd);
  return 1;
}

/* To a temporary 0600 file, fsync'd, renamed over the old one. No expiry: the state carries
 * its own, and the refresh token outlives the access token. */
static int file_put(la_store *s, int slot, const char *p, size_t len, double ttl, la_error *err) {
  file_store *f = (file_store *)s->impl;
  char tmp[PATH_MAX + 32];
  size_t off = 0;
  int fd, ok;
  (void)ttl;
  if (slot != LA_SLOT_STATE) return 0;
  snprintf(tmp, sizeof tmp, "%s.%ld.tmp", f->path, (long)getpid());
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  while (fd >= 0 && off < len) {
    ssize_t w = write(fd, p + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
  ok = fd >= 0 && off == len && fsync(fd) == 0;
  if (fd >= 0) ok = close(fd) == 0 && ok;
  if (!ok || rename(tmp, f->path) != 0) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: cannot write %s: %s", f->path,
                 strerror(errno));
    unlink(tmp);
    return -1;
  }
  return 0;
}

const la_store_ops la_store_file_ops = {"file",     file_open, file_lock, file_unlock,
                                        file_get,   file_put,  file_close};
