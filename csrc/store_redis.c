/* store_redis.c - the Redis store, for fleets: many processes on many hosts share one token
 * and one refresh. hiredis formats the commands and parses the replies; the connection is our
 * own socket (and OpenSSL for TLS), because Debian 12's hiredis 0.14 has no TLS. One
 * connection per store, opened on first use and again after any failure.
 *
 *   <prefix><name>       the state blob (store.c), with a TTL of the access token's life
 *   <prefix><name>:chain the refresh token alone, kept for refresh_ttl: it outlives the state
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

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <hiredis/sds.h>
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
  char key[320], chain_key[330], lock_key[330];
  char where[300];        /* "redis at host:port", for messages */
  int fd;
  pid_t pid;              /* whose connection: a forked child makes its own */
  SSL_CTX *ctx;
  SSL *ssl;
  char owner[33];         /* our lock's value while we hold it */
  int locked;
  int64_t down_until;     /* after a failure, no new connection is tried before this */
  int peer_closed;        /* the last failure: the server had closed the connection */
  la_error last;          /* ... and this failure is reported instead */
} redis_store;

static void disconnect(redis_store *r) {
  if (r->ssl != NULL) SSL_free(r->ssl);
  if (r->fd >= 0) close(r->fd);
  r->ssl = NULL;
  r->fd = -1;
  ERR_clear_error();
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

/* 4 or 6 for an address in canonical text form, else 0 (a name). */
static int ip_family(const char *host) {
  unsigned char buf[16];
  if (inet_pton(AF_INET, host, buf) == 1) return 4;
  if (inet_pton(AF_INET6, host, buf) == 1) return 6;
  return 0;
}

/* OpenSSL writes with write(2), which raises SIGPIPE on a closed peer in a host that did not
 * ignore it: SIGPIPE is blocked in this thread around every TLS call, and one it caused is taken
 * before unblocking. */
typedef struct pipe_guard {
  sigset_t set, old;
  int had;
} pipe_guard;

static void guard_on(pipe_guard *g) {
  sigset_t pending;
  sigemptyset(&g->set);
  sigaddset(&g->set, SIGPIPE);
  sigpending(&pending);
  g->had = sigismember(&pending, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &g->set, &g->old);
}

static void guard_off(pipe_guard *g) {
  sigset_t pending;
  struct timespec zero = {0, 0};
  sigpending(&pending);
  if (!g->had && sigismember(&pending, SIGPIPE)) (void)sigtimedwait(&g->set, NULL, &zero);
  pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* <0 with errno set on failure (EAGAIN: timed out); EINTR is retried here. */
static ssize_t raw_io(redis_store *r, char *p, size_t n, int writing) {
  for (;;) {
    ssize_t k;
    if (r->ssl == NULL) {
      k = writing ? send(r->fd, p, n, MSG_NOSIGNAL) : recv(r->fd, p, n, 0);
      if (k < 0 && errno == EINTR) continue;
      return k;
    } else {
      pipe_guard g;
      int e;
      guard_on(&g);
      errno = 0;
      k = writing ? SSL_write(r->ssl, p, (int)n) : SSL_read(r->ssl, p, (int)n);
      e = k > 0 ? SSL_ERROR_NONE : SSL_get_error(r->ssl, (int)k);
      guard_off(&g);
      if (k > 0) return k;
      if (e == SSL_ERROR_SYSCALL && errno == EINTR) continue;
      if (e == SSL_ERROR_ZERO_RETURN) return 0;
      if (errno == 0) errno = e == SSL_ERROR_SYSCALL ? ECONNRESET : EPROTO;
      return -1;
    }
  }
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
  if ((ip_family(r->host) ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(r->ssl), r->host)
                          : SSL_set_tlsext_host_name(r->ssl, r->host) == 1 &&
                                SSL_set1_host(r->ssl, r->host)) != 1)
    return down(r, err, "TLS", "cannot set the name to verify");
  ERR_clear_error();
  {
    pipe_guard g;
    int ok;
    guard_on(&g);
    ok = SSL_connect(r->ssl) == 1;
    guard_off(&g);
    if (ok) return 0;
  }
  {
    long v = SSL_get_verify_result(r->ssl);
    if (v != X509_V_OK)
      snprintf(why, sizeof why, "certificate not accepted: %s", X509_verify_cert_error_string(v));
    else if (ERR_peek_error() != 0)
      ERR_error_string_n(ERR_get_error(), why, sizeof why);
    else
      snprintf(why, sizeof why, "the connection closed");
    ERR_clear_error();
    return down(r, err, "TLS handshake failed", why);
  }
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
      do
        rc = poll(&pf, 1, ms);
      while (rc < 0 && errno == EINTR);
      if (rc <= 0 ||
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
  r->pid = getpid();
  if (r->tls && tls_start(r, err) != 0) return LA_STORE_DOWN;
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
 * connection closed and err set. The formatted command, the bytes read and the reader's buffer
 * are wiped: they carry tokens. A reader per command: its buffer is ours to wipe. */
static redisReply *exchange(redis_store *r, la_error *err, int argc, const char **argv,
                            const size_t *lens) {
  char *cmd = NULL, buf[4096];
  void *reply = NULL;
  redisReader *reader;
  int len;
  size_t off = 0;
  if ((len = redisFormatCommandArgv(&cmd, argc, argv, lens)) < 0) {
    down(r, err, "out of memory", NULL);
    return NULL;
  }
  while (off < (size_t)len) {
    ssize_t w = raw_io(r, cmd + off, (size_t)len - off, 1);
    if (w <= 0) break;
    off += (size_t)w;
  }
  la_wipe(cmd, (size_t)len);
  redisFreeCommand(cmd);
  if (off < (size_t)len) {
    int e = errno;
    down(r, err, "sending failed", e == EAGAIN ? "timed out" : strerror(e));
    r->peer_closed = e == EPIPE || e == ECONNRESET;
    return NULL;
  }
  if ((reader = redisReaderCreate()) == NULL) {
    down(r, err, "out of memory", NULL);
    return NULL;
  }
  for (;;) {
    ssize_t n;
    if (redisReaderGetReply(reader, &reply) != REDIS_OK) {
      down(r, err, "the reply is not Redis protocol", NULL);
      break;
    }
    if (reply != NULL) break;
    n = raw_io(r, buf, sizeof buf, 0);
    if (n == 0) {
      down(r, err, "the connection closed", NULL);
      r->peer_closed = 1;
      break;
    }
    if (n < 0) {
      int e = errno;
      down(r, err, "reading failed", e == EAGAIN ? "timed out" : strerror(e));
      r->peer_closed = e == ECONNRESET;
      break;
    }
    redisReaderFeed(reader, buf, (size_t)n);
    la_wipe(buf, (size_t)n);
  }
  if (reader->buf != NULL) la_wipe(reader->buf, sdsalloc(reader->buf));
  redisReaderFree(reader);
  return (redisReply *)reply;
}

/* exchange() on the connection, made first if there is none. A kept connection the server has
 * closed since (a restart, an idle timeout) is made again once: that is not an outage. */
static redisReply *command(redis_store *r, la_error *err, int argc, const char **argv,
                           const size_t *lens) {
  redisReply *rep;
  int kept;
  if (r->fd >= 0 && r->pid != getpid()) { /* forked: the parent's stream is not ours */
    if (r->ssl != NULL) SSL_free(r->ssl); /* frees without a close_notify on the stream */
    close(r->fd);
    r->ssl = NULL;
    r->fd = -1;
    r->locked = 0;
  }
  if (r->fd < 0 && la_now() < r->down_until) {
    *err = r->last;
    return NULL;
  }
  kept = r->fd >= 0;
  if (!kept && connect_store(r, err) != 0) return NULL;
  r->peer_closed = 0;
  rep = exchange(r, err, argc, argv, lens);
  if (rep == NULL && kept && r->peer_closed) {
    la_error_reset(err);
    r->down_until = 0;
    if (connect_store(r, err) != 0) return NULL;
    rep = exchange(r, err, argc, argv, lens);
  }
  return rep;
}

/* Frees a reply whose strings may be tokens. */
static void free_reply(redisReply *rep) {
  if (rep->type == REDIS_REPLY_STRING && rep->str != NULL) la_wipe(rep->str, rep->len);
  freeReplyObject(rep);
}

/* Redis's error text, without what "unknown command ..., with args beginning with: ..." would
 * echo of our arguments (a password, a blob). */
static int reply_error(redis_store *r, la_error *err, redisReply *rep, const char *what) {
  char msg[160];
  const char *args = strstr(rep->str, ", with args");
  size_t n = args != NULL ? (size_t)(args - rep->str) : rep->len;
  snprintf(msg, sizeof msg, "%.*s", n > 120 ? 120 : (int)n, rep->str);
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
  if (r->host != NULL && r->host[0] == '[' && r->host[strlen(r->host) - 1] == ']') { /* [::1] */
    memmove(r->host, r->host + 1, strlen(r->host) - 2);
    r->host[strlen(r->host) - 2] = '\0';
  }
  r->username = dup_or_null(conf->username, &oom);
  r->ca_file = dup_or_null(conf->ca_file, &oom);
  if (conf->password.p != NULL && la_secret_set(&r->password, conf->password.p,
                                                conf->password.n) != 0)
    oom = 1;
  r->port = conf->port > 0 ? conf->port : 6379;
  r->db = conf->db;
  r->tls = conf->tls;
  r->timeout = conf->timeout > 0 ? conf->timeout : 1.0;
  snprintf(r->key, sizeof r->key, "%s%s", prefix, s->name); /* options.c caps the prefix */
  snprintf(r->chain_key, sizeof r->chain_key, "%s%s:chain", prefix, s->name);
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

static int redis_unlock(la_store *s, la_error *err) {
  redis_store *r = (redis_store *)s->impl;
  const char *argv[5];
  size_t lens[5];
  redisReply *rep;
  if (!r->locked) return 0;
  r->locked = 0;
  argv[0] = "EVAL", lens[0] = 4;
  argv[1] = UNLOCK_SCRIPT, lens[1] = sizeof UNLOCK_SCRIPT - 1;
  argv[2] = "1", lens[2] = 1;
  argv[3] = r->lock_key, lens[3] = strlen(r->lock_key);
  argv[4] = r->owner, lens[4] = strlen(r->owner);
  /* a failure leaves the lock to lapse after its hold time */
  if ((rep = command(r, err, 5, argv, lens)) == NULL) return LA_STORE_DOWN;
  if (rep->type == REDIS_REPLY_ERROR)
    return reply_error(r, err, rep, "EVAL (the lock's release) was refused");
  freeReplyObject(rep);
  return 0;
}

static void redis_close(la_store *s) {
  redis_store *r = (redis_store *)s->impl;
  if (r == NULL) return;
  if (r->locked && r->fd >= 0) {
    la_error err;
    la_error_reset(&err);
    (void)redis_unlock(s, &err);
  }
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
    sleep_ms = sleep_ms * 2 > 50 ? 50 : sleep_ms * 2;
  }
}

static int redis_get(la_store *s, int slot, la_buf *out, la_error *err) {
  redis_store *r = (redis_store *)s->impl;
  const char *key = slot == LA_SLOT_STATE ? r->key : r->chain_key;
  const char *argv[2];
  size_t lens[2];
  redisReply *rep;
  int rc = 0;
  argv[0] = "GET", lens[0] = 3;
  argv[1] = key, lens[1] = strlen(key);
  if ((rep = command(r, err, 2, argv, lens)) == NULL) return LA_STORE_DOWN;
  if (rep->type == REDIS_REPLY_ERROR) return reply_error(r, err, rep, "GET was refused");
  if (rep->type == REDIS_REPLY_STRING) {
    rc = la_buf_add(out, rep->str, rep->len) == 0 ? 1 : 0;
  }
  free_reply(rep);
  return rc;
}

static int redis_put(la_store *s, int slot, const char *p, size_t n, double ttl, la_error *err) {
  redis_store *r = (redis_store *)s->impl;
  const char *key = slot == LA_SLOT_STATE ? r->key : r->chain_key;
  char px[32];
  const char *argv[5];
  size_t lens[5];
  redisReply *rep;
  if (ttl < 0.001) return 0; /* an expired token: nothing worth keeping */
  snprintf(px, sizeof px, "%lld", (long long)(ttl < LA_MAX_EXPIRES_IN ? ttl * 1000 : LA_MAX_EXPIRES_IN * 1000));
  argv[0] = "SET", lens[0] = 3;
  argv[1] = key, lens[1] = strlen(key);
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
