/* store_redis.c - the Redis store, for fleets: many processes on many hosts share one token
 * and one refresh. hiredis formats the commands and parses the replies; the connection is our
 * own socket (and OpenSSL for TLS), because Debian 12's hiredis 0.14 has no TLS. One
 * connection per store, opened on first use and again after any failure.
 *
 *   <prefix><name>       the state blob (store.c), with a TTL of the access token's life
 *   <prefix><name>:lock  the refresh lock: SET NX PX with a random owner, released by a
 *                        compare-and-delete script so that a lapsed holder cannot drop a lock
 *                        another process has taken since.
 * Every failure is LA_STORE_DOWN: the caller logs it and refreshes on its own. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "store.h"

static const char UNLOCK_SCRIPT[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end "
    "return 0";

typedef struct redis_store {
  char *host, *username, *ca_file;
  la_secret password;
  int port, db, tls;
  double timeout;
  char key[320], lock_key[330];
  char where[300];        /* "redis at host:port", for messages */
  int fd;
  SSL_CTX *ctx;
  SSL *ssl;
  redisReader *reader;
  char owner[33];         /* our lock's value while we hold it */
  int locked;
  int64_t down_until;     /* after a failure, no new connection is tried before this */
  la_error last;          /* ... and this failure is reported instead */
} redis_store;

static void disconnect(redis_store *r) {
  if (r->ssl != NULL) SSL_free(r->ssl);
  if (r->fd >= 0) close(r->fd);
  if (r->reader != NULL) redisReaderFree(r->reader);
  r->ssl = NULL;
  r->fd = -1;
  r->reader = NULL;
}

/* Records a failure: the connection is dropped, and for a second calls fail at once with the
 * same error, so that a Redis that is down costs one connect timeout, not one per call. */
static int down(redis_store *r, la_error *err, const char *what, const char *detail) {
  disconnect(r);
  la_error_set(err, LA_ERR_NETWORK, 1, "token store: %s: %s%s%s", r->where, what,
               detail != NULL ? ": " : "", detail != NULL ? detail : "");
  r->last = *err;
  r->down_until = la_now() + 1000000000;
  return LA_STORE_DOWN;
}

static int is_ip(const char *host) {
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_flags = AI_NUMERICHOST;
  if (getaddrinfo(host, NULL, &hints, &ai) != 0) return 0;
  freeaddrinfo(ai);
  return 1;
}

/* A write that cannot raise SIGPIPE in a host that did not ignore it: SIGPIPE is blocked in
 * this thread for the call, and one it caused is taken before unblocking. */
static ssize_t raw_write(redis_store *r, const char *p, size_t n) {
  sigset_t pipe_set, old, pending;
  ssize_t w;
  int had;
  if (r->ssl == NULL) return send(r->fd, p, n, MSG_NOSIGNAL);
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  sigpending(&pending);
  had = sigismember(&pending, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  w = SSL_write(r->ssl, p, (int)n);
  if (w <= 0 && !had) {
    struct timespec zero = {0, 0};
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE)) (void)sigtimedwait(&pipe_set, NULL, &zero);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return w;
}

static ssize_t raw_read(redis_store *r, char *p, size_t n) {
  if (r->ssl != NULL) return SSL_read(r->ssl, p, (int)n);
  return recv(r->fd, p, n, 0);
}

static int tls_start(redis_store *r, la_error *err) {
  char why[160] = "";
  if (r->ctx == NULL) {
    if ((r->ctx = SSL_CTX_new(TLS_client_method())) == NULL)
      return down(r, err, "TLS", "cannot make a context");
    SSL_CTX_set_verify(r->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_min_proto_version(r->ctx, TLS1_2_VERSION);
    if ((r->ca_file != NULL ? SSL_CTX_load_verify_locations(r->ctx, r->ca_file, NULL)
                            : SSL_CTX_set_default_verify_paths(r->ctx)) != 1) {
      SSL_CTX_free(r->ctx);
      r->ctx = NULL;
      return down(r, err, "TLS", "cannot load the CA certificates");
    }
  }
  if ((r->ssl = SSL_new(r->ctx)) == NULL || SSL_set_fd(r->ssl, r->fd) != 1)
    return down(r, err, "TLS", "cannot start");
  if (is_ip(r->host)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(r->ssl), r->host);
  } else {
    SSL_set_tlsext_host_name(r->ssl, r->host);
    SSL_set1_host(r->ssl, r->host);
  }
  ERR_clear_error();
  if (SSL_connect(r->ssl) != 1) {
    long v = SSL_get_verify_result(r->ssl);
    if (v != X509_V_OK)
      snprintf(why, sizeof why, "certificate not accepted: %s", X509_verify_cert_error_string(v));
    else
      ERR_error_string_n(ERR_get_error(), why, sizeof why);
    ERR_clear_error();
    return down(r, err, "TLS handshake failed", why[0] ? why : NULL);
  }
  return 0;
}

/* A connected socket with timeouts, or -1. */
static int dial(redis_store *r, la_error *err) {
  struct addrinfo hints, *ai = NULL, *p;
  char port[16], why[128] = "no address";
  int ms = (int)(r->timeout * 1000), rc;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  snprintf(port, sizeof port, "%d", r->port);
  if ((rc = getaddrinfo(r->host, port, &hints, &ai)) != 0)
    return down(r, err, "cannot resolve the host", gai_strerror(rc));
  for (p = ai; p != NULL && r->fd < 0; p = p->ai_next) {
    int fd = socket(p->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), soerr = 0;
    socklen_t len = sizeof soerr;
    struct pollfd pf;
    if (fd < 0) continue;
    if (connect(fd, p->ai_addr, p->ai_addrlen) != 0) {
      pf.fd = fd;
      pf.events = POLLOUT;
      if (errno != EINPROGRESS) {
        snprintf(why, sizeof why, "%s", strerror(errno));
        close(fd);
        continue;
      }
      if ((rc = poll(&pf, 1, ms)) <= 0 ||
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0) {
        snprintf(why, sizeof why, "%s",
                 rc == 0 ? "connect timed out" : strerror(soerr ? soerr : errno));
        close(fd);
        continue;
      }
    }
    r->fd = fd;
  }
  freeaddrinfo(ai);
  if (r->fd < 0) return down(r, err, "cannot connect", why);
  {
    struct timeval tv;
    int one = 1;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) & ~O_NONBLOCK);
    setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(r->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return 0;
}

static redisReply *exchange(redis_store *r, la_error *err, int argc, const char **argv,
                            const size_t *lens);

/* Connects, and sends AUTH and SELECT. 0 or LA_STORE_DOWN. */
static int connect_store(redis_store *r, la_error *err) {
  redisReply *rep;
  if (dial(r, err) != 0) return LA_STORE_DOWN;
  if (r->tls && tls_start(r, err) != 0) return LA_STORE_DOWN;
  if ((r->reader = redisReaderCreate()) == NULL) return down(r, err, "out of memory", NULL);
  if (r->password.p != NULL) {
    const char *argv[3];
    size_t lens[3];
    int argc = 0, bad;
    argv[argc] = "AUTH", lens[argc++] = 4;
    if (r->username != NULL) argv[argc] = r->username, lens[argc++] = strlen(r->username);
    argv[argc] = r->password.p, lens[argc++] = r->password.n;
    if ((rep = exchange(r, err, argc, argv, lens)) == NULL) return LA_STORE_DOWN;
    bad = rep->type == REDIS_REPLY_ERROR;
    freeReplyObject(rep); /* redis does not echo the password */
    if (bad) return down(r, err, "AUTH was refused", "check the redis password (and username)");
  }
  if (r->db != 0) {
    char db[16];
    const char *argv[2];
    size_t lens[2];
    int bad;
    snprintf(db, sizeof db, "%d", r->db);
    argv[0] = "SELECT", lens[0] = 6;
    argv[1] = db, lens[1] = strlen(db);
    if ((rep = exchange(r, err, 2, argv, lens)) == NULL) return LA_STORE_DOWN;
    bad = rep->type == REDIS_REPLY_ERROR;
    freeReplyObject(rep);
    if (bad) return down(r, err, "SELECT was refused", "check the database number");
  }
  return 0;
}

/* One command and its reply (maybe an error reply) on the open connection, or NULL with the
 * connection closed and err set. The formatted command and the bytes read are wiped: they
 * carry tokens. */
static redisReply *exchange(redis_store *r, la_error *err, int argc, const char **argv,
                            const size_t *lens) {
  char *cmd = NULL, buf[4096];
  void *reply = NULL;
  int len;
  size_t off = 0;
  if ((len = redisFormatCommandArgv(&cmd, argc, argv, lens)) < 0) {
    down(r, err, "out of memory", NULL);
    return NULL;
  }
  while (off < (size_t)len) {
    ssize_t w = raw_write(r, cmd + off, (size_t)len - off);
    if (w < 0 && errno == EINTR && r->ssl == NULL) continue;
    if (w <= 0) break;
    off += (size_t)w;
  }
  la_wipe(cmd, (size_t)len);
  redisFreeCommand(cmd);
  if (off < (size_t)len) {
    down(r, err, "sending failed", errno == EAGAIN ? "timed out" : strerror(errno));
    return NULL;
  }
  for (;;) {
    ssize_t n;
    if (redisReaderGetReply(r->reader, &reply) != REDIS_OK) {
      down(r, err, "the reply is not Redis protocol", NULL);
      return NULL;
    }
    if (reply != NULL) return (redisReply *)reply;
    n = raw_read(r, buf, sizeof buf);
    if (n < 0 && errno == EINTR && r->ssl == NULL) continue;
    if (n == 0) {
      down(r, err, "the connection closed", NULL);
      return NULL;
    }
    if (n < 0) {
      down(r, err, "reading failed", errno == EAGAIN ? "timed out" : strerror(errno));
      return NULL;
    }
    redisReaderFeed(r->reader, buf, (size_t)n);
    la_wipe(buf, (size_t)n);
  }
}

/* exchange() on the connection, made first if there is none. */
static redisReply *command(redis_store *r, la_error *err, int argc, const char **argv,
                           const size_t *lens) {
  if (r->fd < 0 && la_now() < r->down_until) {
    *err = r->last;
    return NULL;
  }
  if (r->fd < 0 && connect_store(r, err) != 0) return NULL;
  return exchange(r, err, argc, argv, lens);
}

/* Frees a reply whose strings may be tokens. */
static void free_reply(redisReply *rep) {
  if (rep->type == REDIS_REPLY_STRING && rep->str != NULL) la_wipe(rep->str, rep->len);
  freeReplyObject(rep);
}

static int reply_error(redis_store *r, la_error *err, redisReply *rep, const char *what) {
  char msg[160];
  snprintf(msg, sizeof msg, "%.*s", rep->len > 120 ? 120 : (int)rep->len, rep->str);
  free_reply(rep);
  return down(r, err, what, msg);
}

static char *dup_or_null(const char *s, int *oom) {
  char *d;
  if (s == NULL) return NULL;
  if ((d = strdup(s)) == NULL) *oom = 1;
  return d;
}

static int redis_open(la_store *s, const la_store_conf *conf, la_error *err) {
  redis_store *r = calloc(1, sizeof *r);
  const char *prefix = conf->prefix != NULL ? conf->prefix : "lusidauth:";
  int oom = 0;
  if (r == NULL) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: out of memory");
    return -1;
  }
  r->fd = -1;
  r->host = dup_or_null(conf->host != NULL ? conf->host : "127.0.0.1", &oom);
  r->username = dup_or_null(conf->username, &oom);
  r->ca_file = dup_or_null(conf->ca_file, &oom);
  if (conf->password.p != NULL && la_secret_set(&r->password, conf->password.p,
                                                conf->password.n) != 0)
    oom = 1;
  r->port = conf->port > 0 ? conf->port : 6379;
  r->db = conf->db;
  r->tls = conf->tls;
  r->timeout = conf->timeout > 0 ? conf->timeout : 1.0;
  snprintf(r->key, sizeof r->key, "%s%s", prefix, s->name);
  snprintf(r->lock_key, sizeof r->lock_key, "%s%s:lock", prefix, s->name);
  {
    const char *h = r->host != NULL ? r->host : "";
    int v6 = strchr(h, ':') != NULL;
    snprintf(r->where, sizeof r->where, "redis at %s%s%s:%d%s", v6 ? "[" : "", h, v6 ? "]" : "",
             r->port, r->tls ? " (TLS)" : "");
  }
  s->impl = r;
  if (oom) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: out of memory");
    return -1; /* the caller closes */
  }
  return 0; /* connected on first use: a Redis that is down now must not stop the client */
}

static void redis_unlock(la_store *s) {
  redis_store *r = (redis_store *)s->impl;
  const char *argv[5];
  size_t lens[5];
  redisReply *rep;
  la_error err;
  if (!r->locked) return;
  r->locked = 0;
  argv[0] = "EVAL", lens[0] = 4;
  argv[1] = UNLOCK_SCRIPT, lens[1] = sizeof UNLOCK_SCRIPT - 1;
  argv[2] = "1", lens[2] = 1;
  argv[3] = r->lock_key, lens[3] = strlen(r->lock_key);
  argv[4] = r->owner, lens[4] = strlen(r->owner);
  la_error_reset(&err);
  if ((rep = command(r, &err, 5, argv, lens)) != NULL) freeReplyObject(rep);
  /* a failure here leaves the lock to lapse after its hold time */
}

static void redis_close(la_store *s) {
  redis_store *r = (redis_store *)s->impl;
  if (r == NULL) return;
  if (r->locked && r->fd >= 0) redis_unlock(s);
  disconnect(r);
  if (r->ctx != NULL) SSL_CTX_free(r->ctx);
  free(r->host);
  free(r->username);
  free(r->ca_file);
  la_secret_clear(&r->password);
  free(r);
  s->impl = NULL;
}

static int redis_lock(la_store *s, double wait, double hold, la_error *err) {
  redis_store *r = (redis_store *)s->impl;
  unsigned char raw[16];
  char px[32];
  const char *argv[6];
  size_t lens[6];
  int64_t until = la_now() + (int64_t)(wait * 1e9);
  long sleep_ms = 5;
  if (RAND_bytes(raw, sizeof raw) != 1) {
    la_error_set(err, LA_ERR_CONFIG, 0, "token store: no random bytes for the lock");
    return -1;
  }
  for (size_t i = 0; i < sizeof raw; i++) snprintf(r->owner + 2 * i, 3, "%02x", raw[i]);
  snprintf(px, sizeof px, "%lld", (long long)(hold > 1 ? hold * 1000 : 1000));
  argv[0] = "SET", lens[0] = 3;
  argv[1] = r->lock_key, lens[1] = strlen(r->lock_key);
  argv[2] = r->owner, lens[2] = strlen(r->owner);
  argv[3] = "NX", lens[3] = 2;
  argv[4] = "PX", lens[4] = 2;
  argv[5] = px, lens[5] = strlen(px);
  for (;;) {
    struct timespec ts;
    redisReply *rep = command(r, err, 6, argv, lens);
    if (rep == NULL) return LA_STORE_DOWN;
    if (rep->type == REDIS_REPLY_ERROR) return reply_error(r, err, rep, "SET NX was refused");
    if (rep->type == REDIS_REPLY_STATUS) {
      freeReplyObject(rep);
      r->locked = 1;
      return 1;
    }
    freeReplyObject(rep); /* nil: another process holds it */
    if (la_now() >= until) return 0;
    ts.tv_sec = 0;
    ts.tv_nsec = sleep_ms * 1000000L;
    nanosleep(&ts, NULL);
    if (sleep_ms < 50) sleep_ms *= 2;
  }
}

static int redis_get(la_store *s, la_buf *out, la_error *err) {
  redis_store *r = (redis_store *)s->impl;
  const char *argv[2] = {"GET", r->key};
  size_t lens[2] = {3, strlen(r->key)};
  redisReply *rep = command(r, err, 2, argv, lens);
  int rc = 0;
  if (rep == NULL) return LA_STORE_DOWN;
  if (rep->type == REDIS_REPLY_ERROR) return reply_error(r, err, rep, "GET was refused");
  if (rep->type == REDIS_REPLY_STRING) {
    rc = la_buf_add(out, rep->str, rep->len) == 0 ? 1 : 0;
  }
  free_reply(rep);
  return rc;
}

static int redis_put(la_store *s, const char *p, size_t n, double ttl, la_error *err) {
  redis_store *r = (redis_store *)s->impl;
  char px[32];
  const char *argv[5];
  size_t lens[5];
  redisReply *rep;
  if (ttl < 0.001) return 0; /* an expired token: nothing worth keeping */
  snprintf(px, sizeof px, "%lld", (long long)(ttl * 1000));
  argv[0] = "SET", lens[0] = 3;
  argv[1] = r->key, lens[1] = strlen(r->key);
  argv[2] = p, lens[2] = n;
  argv[3] = "PX", lens[3] = 2;
  argv[4] = px, lens[4] = strlen(px);
  if ((rep = command(r, err, 5, argv, lens)) == NULL) return LA_STORE_DOWN;
  if (rep->type == REDIS_REPLY_ERROR) return reply_error(r, err, rep, "SET was refused");
  freeReplyObject(rep);
  return 0;
}

const la_store_ops la_store_redis_ops = {"redis",   redis_open, redis_lock, redis_unlock,
                                         redis_get, redis_put,  redis_close};
