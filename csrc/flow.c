/* flow.c - the token flow as a state machine with no I/O in it.
 * Given the cache entry, the clock and the last response, it answers with the next action:
 * use the token, send a request for some grant, wait, or fail. A transport (http.c from C,
 * lusidauth.resty from Lua) performs the requests, so every transport shares every decision. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lusidauth.h"

#define LA_DEFAULT_SCOPE "openid client groups offline_access"
#define LA_BACKOFF_MAX 60.0 /* seconds between attempts while a stale token is served */

static const char *const level_names[] = {"none", "debug", "info", "warn"};

const char *la_log_level_name(int level) {
  return level >= 0 && level <= LA_LOG_WARN ? level_names[level] : "none";
}

static void note(la_flow *f, int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Leaves one line for the log hook; the driver passes it on. Never given a secret. */
static void note(la_flow *f, int level, const char *fmt, ...) {
  va_list ap;
  f->note_level = level;
  va_start(ap, fmt);
  vsnprintf(f->note, sizeof f->note, fmt, ap);
  va_end(ap);
}

/* xorshift64*: jitter only, not security; the driver seeds it. Returns [0, 1). */
static double jitter(la_flow *f) {
  f->rng ^= f->rng >> 12;
  f->rng ^= f->rng << 25;
  f->rng ^= f->rng >> 27;
  return (double)((f->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static const char *const grant_names[] = {"password", "refresh_token", "client_credentials", "pat"};

const char *la_grant_name(int grant) {
  return grant >= 0 && grant <= LA_GRANT_PAT ? grant_names[grant] : "unknown";
}

static la_action act(int kind, int grant) {
  la_action a;
  a.kind = kind;
  a.grant = grant;
  a.wait = 0;
  return a;
}

static la_action send_grant(la_flow *f, int grant) {
  f->sent = grant;
  return act(LA_ACT_SEND, grant);
}

static la_action fail_config(la_flow *f, const char *msg) {
  la_error_set(&f->err, LA_ERR_CONFIG, 0, "%s", msg);
  return act(LA_ACT_FAIL, 0);
}

/* The grant that gets a first token: the stored refresh token if there is one. */
static la_action obtain(la_flow *f, const la_creds *c, const la_entry *e) {
  if (e->refresh.p != NULL) return send_grant(f, LA_GRANT_REFRESH);
  if (c->grant == LA_GRANT_REFRESH)
    return fail_config(f, "no refresh token: the client's refresh token was rejected or never "
                          "issued; supply a new one or use a password client");
  return send_grant(f, c->grant);
}

la_action la_flow_start(la_flow *f, const la_creds *c, la_entry *e, int mode, int64_t now,
                        uint64_t seed) {
  int state = la_entry_state(e, now);
  memset(f, 0, sizeof *f);
  la_error_reset(&f->err);
  f->mode = mode;
  f->rng = seed | 1;
  f->deadline = now + (int64_t)(c->deadline * 1e9);
  switch (mode) {
  case LA_MODE_LOGIN:
    if (c->grant == LA_GRANT_REFRESH) return obtain(f, c, e);
    return send_grant(f, c->grant);
  case LA_MODE_REFRESH:
    if (e->refresh.p == NULL)
      return fail_config(f, "no refresh token to refresh with: log in first, with a scope that "
                            "includes offline_access");
    return send_grant(f, LA_GRANT_REFRESH);
  default:
    if (state == LA_FRESH) return act(LA_ACT_USE, 0);
    /* stale and backing off after a failed refresh: keep serving the valid token */
    if (state == LA_STALE && now < e->retry_at) return act(LA_ACT_USE, 0);
    /* stale, and nothing to refresh with (a refresh token got invalid_grant): serve it out */
    if (state == LA_STALE && e->refresh.p == NULL && c->grant == LA_GRANT_REFRESH)
      return act(LA_ACT_USE, 0);
    return obtain(f, c, e);
  }
}

/* The flow decides again on the entry as it now is (a token store changed it), keeping the
 * call's mode and deadline: past the deadline nothing more is sent. */
la_action la_flow_restart(la_flow *f, const la_creds *c, la_entry *e, int64_t now, uint64_t seed) {
  int64_t deadline = f->deadline;
  la_action a = la_flow_start(f, c, e, f->mode, now, seed);
  f->deadline = deadline;
  if (now >= deadline && a.kind == LA_ACT_SEND) {
    la_error_set(&f->err, LA_ERR_TIMEOUT, 1,
                 "token store: the deadline passed while waiting for another process's refresh");
    return act(LA_ACT_FAIL, 0);
  }
  return a;
}

/* Builds the form body and, for grants that use it, the HTTP Basic header. 0, or -1 (memory). */
int la_flow_request(const la_creds *c, const la_entry *e, int grant, la_buf *body, la_buf *auth) {
  const char *scope = c->scope;
  int rc = 0;
  switch (grant) {
  case LA_GRANT_PASSWORD:
    if (scope == NULL) scope = LA_DEFAULT_SCOPE;
    rc |= la_form_add(body, "grant_type", "password", 8);
    rc |= la_form_add(body, "username", c->username, strlen(c->username));
    rc |= la_form_add(body, "password", c->password.p, c->password.n);
    rc |= la_form_add(body, "scope", scope, strlen(scope));
    rc |= la_form_add(body, "client_id", c->client_id, strlen(c->client_id));
    rc |= la_form_add(body, "client_secret", c->client_secret.p, c->client_secret.n);
    return rc ? -1 : 0;
  case LA_GRANT_REFRESH:
    rc |= la_form_add(body, "grant_type", "refresh_token", 13);
    rc |= la_form_add(body, "refresh_token", e->refresh.p, e->refresh.n);
    break;
  default:
    rc |= la_form_add(body, "grant_type", "client_credentials", 18);
    if (scope != NULL) rc |= la_form_add(body, "scope", scope, strlen(scope));
    break;
  }
  if (c->basic.p != NULL)
    rc |= la_buf_add(auth, c->basic.p, c->basic.n);
  else
    rc |= la_basic_auth(auth, c->client_id, strlen(c->client_id), c->client_secret.p,
                        c->client_secret.n);
  return rc ? -1 : 0;
}

/* Takes every form of one secret out of b: raw, form-encoded ('+' for space) and
 * percent-encoded ("%20"), since servers echo requests in any of them. */
static int redact_forms(la_buf *b, const char *p, size_t n) {
  la_buf enc = {NULL, 0, 0}, pct = {NULL, 0, 0};
  size_t i;
  int rc = la_redact(b, p, n);
  if (rc == 0 && (rc = la_urlencode(&enc, p, n)) == 0) {
    rc = la_redact(b, enc.p, enc.n);
    for (i = 0; rc == 0 && i < enc.n; i++)
      rc = enc.p[i] == '+' ? la_buf_addstr(&pct, "%20") : la_buf_add(&pct, enc.p + i, 1);
    if (rc == 0) rc = la_redact(b, pct.p, pct.n);
  }
  la_buf_free(&enc);
  la_buf_free(&pct);
  return rc;
}

/* Copies server-supplied text for an error: prefix (ours), then the field a, then sep and the
 * field b when b is non-empty. Every secret is redacted from the raw bytes first, then control
 * characters become spaces (one line), and only then is the text cut to fit: so neither a
 * secret with a control character, nor one split across a and b, nor one straddling the cut,
 * survives in part. */
static void copy_text(char *dst, size_t cap, const char *prefix, const la_field *fa,
                      const char *sep, const la_field *fb, const la_creds *c, const la_entry *e) {
  const la_secret *secrets[4];
  la_buf b = {NULL, 0, 0}, basic = {NULL, 0, 0};
  size_t i, n;
  int pass, rc = la_buf_addstr(&b, prefix);
  dst[0] = '\0';
  if (rc == 0 && fa != NULL && fa->type == LA_F_STRING) rc = la_buf_add(&b, fa->p, fa->n);
  if (rc == 0 && fb != NULL && fb->type == LA_F_STRING && fb->n > 0) {
    rc = la_buf_addstr(&b, sep);
    if (rc == 0) rc = la_buf_add(&b, fb->p, fb->n);
  }
  secrets[0] = &c->password;
  secrets[1] = &c->client_secret;
  secrets[2] = &e->refresh;
  secrets[3] = &e->access;
  if (rc == 0 && c->client_id != NULL && c->client_secret.p != NULL)
    rc = la_basic_auth(&basic, c->client_id, strlen(c->client_id), c->client_secret.p,
                       c->client_secret.n);
  /* twice: on the raw bytes (a secret holding a control character), then once control
   * characters are spaces (a secret whose space the server sent as a control character) */
  for (pass = 0; rc == 0 && pass < 2; pass++) {
    for (i = 0; rc == 0 && i < 4; i++)
      if (secrets[i]->p != NULL) rc = redact_forms(&b, secrets[i]->p, secrets[i]->n);
    /* the HTTP Basic credential, base64 of the encoded id and secret */
    if (rc == 0 && basic.n > 6) rc = redact_forms(&b, basic.p + 6, basic.n - 6);
    for (i = 0; pass == 0 && i < b.n; i++) {
      unsigned char ch = (unsigned char)b.p[i];
      if (ch < 0x20 || ch == 0x7f) b.p[i] = ' ';
    }
  }
  if (rc == 0 && b.n > 0) {
    n = b.n < cap - 1 ? b.n : cap - 1;
    memcpy(dst, b.p, n);
    dst[n] = '\0';
  } else if (rc != 0) {
    snprintf(dst, cap, "%s(not shown: out of memory)", prefix);
  }
  la_buf_free(&b);
  la_buf_free(&basic);
}

/* After a failure: while the cached token is still valid, serve it and back off (no caller
 * waits while a valid token exists); else retry a transient failure with jittered exponential
 * backoff or the server's Retry-After, within retries and the deadline; else fail. */
static la_action failed(la_flow *f, const la_creds *c, la_entry *e, int64_t now) {
  double wait;
  la_action a;
  if (f->mode == LA_MODE_TOKEN && la_entry_state(e, now) == LA_STALE) {
    wait = ldexp(1.0, e->failures < 6 ? e->failures : 6);
    if (f->err.retry_after > wait) wait = f->err.retry_after;
    if (wait > LA_BACKOFF_MAX) wait = LA_BACKOFF_MAX;
    e->failures++;
    e->retry_at = now + (int64_t)(wait * 1e9);
    note(f, LA_LOG_WARN, "%s; serving the still-valid token (%.0f s left), next refresh in %.0f s",
         f->err.message, la_entry_seconds_left(e, now), wait);
    return act(LA_ACT_USE, 0);
  }
  if (!f->err.retryable) return act(LA_ACT_FAIL, 0);
  if (f->retries >= c->retries) {
    if (c->retries > 0) {
      size_t n = strlen(f->err.message);
      snprintf(f->err.message + n, sizeof f->err.message - n, " (gave up after %d attempts)",
               f->attempts);
    }
    return act(LA_ACT_FAIL, 0);
  }
  if (f->err.retry_after >= 0) {
    if (f->err.retry_after > c->max_retry_wait) {
      note(f, LA_LOG_WARN, "%s; the server asks to wait %.0f s, more than max_retry_wait (%.0f s): "
           "not waiting", f->err.message, f->err.retry_after, c->max_retry_wait);
      return act(LA_ACT_FAIL, 0);
    }
    wait = f->err.retry_after;
  } else {
    wait = c->retry_base * ldexp(1.0, f->retries) * (0.5 + 0.5 * jitter(f));
  }
  if (now + (int64_t)(wait * 1e9) > f->deadline) {
    size_t n = strlen(f->err.message);
    snprintf(f->err.message + n, sizeof f->err.message - n, " (deadline of %g s reached)",
             c->deadline);
    return act(LA_ACT_FAIL, 0);
  }
  f->retries++;
  if (f->err.retry_after >= 0)
    note(f, LA_LOG_WARN, "%s; waiting %.0f s as the server asks (Retry-After), then retry %d of %d",
         f->err.message, wait, f->retries, c->retries);
  else
    note(f, LA_LOG_WARN, "%s; retry %d of %d in %.2f s", f->err.message, f->retries, c->retries,
         wait);
  a = act(LA_ACT_WAIT, f->sent);
  a.wait = wait;
  return a;
}

/* After a WAIT: send the same request again. */
la_action la_flow_waited(la_flow *f) { return send_grant(f, f->sent); }

static int is_str(const la_field *fl, const char *s) {
  return fl->type == LA_F_STRING && fl->n == strlen(s) && memcmp(fl->p, s, fl->n) == 0;
}

/* expires_in as a number of seconds, or -1 when it is unusable. Accepts a decimal string
 * ("3600", "1.5"); not hex, exponents, "inf" or "nan", which strtod alone would take. */
static double expires_seconds(const la_field *fl) {
  double v;
  char buf[64], *end;
  if (fl->type == LA_F_ABSENT) return LA_DEFAULT_EXPIRES_IN;
  if (fl->type == LA_F_NUMBER) {
    v = fl->num;
  } else if (fl->type == LA_F_STRING && fl->n > 0 && fl->n < sizeof buf) {
    memcpy(buf, fl->p, fl->n);
    buf[fl->n] = '\0';
    if (strspn(buf, "0123456789.") != fl->n) return -1;
    v = strtod(buf, &end);
    if (*end != '\0') return -1;
  } else {
    return -1;
  }
  if (!(v > 0) || !isfinite(v)) return -1;
  return v > LA_MAX_EXPIRES_IN ? LA_MAX_EXPIRES_IN : v;
}

/* A response that makes no sense fails like any other: a still-valid token is served. */
static la_action protocol(la_flow *f, const la_creds *c, la_entry *e, const la_response *r,
                          int64_t now, const char *what) {
  la_error_set(&f->err, LA_ERR_PROTOCOL, 0, "token response (%s grant, HTTP %ld): %s",
               la_grant_name(f->sent), r->status, what);
  f->err.status = r->status;
  return failed(f, c, e, now);
}

static la_action success(la_flow *f, const la_creds *c, la_entry *e, const la_response *r,
                         int64_t sent_at, int64_t now) {
  const la_field *at = &r->access_token, *tt = &r->token_type, *rt = &r->refresh_token;
  double expires;
  if (r->body_problem != NULL) return protocol(f, c, e, r, now, r->body_problem);
  if (at->type == LA_F_ABSENT) return protocol(f, c, e, r, now, "no access_token");
  if (at->type != LA_F_STRING) return protocol(f, c, e, r, now, "access_token is not a string");
  if (at->n == 0) return protocol(f, c, e, r, now, "access_token is empty");
  if (at->n > LA_TOKEN_MAX) return protocol(f, c, e, r, now, "access_token is too long");
  if (!la_header_safe(at->p, at->n))
    return protocol(f, c, e, r, now, "access_token contains a space or control character");
  if (tt->type != LA_F_ABSENT && !(tt->type == LA_F_STRING && tt->n == 6 &&
                                   strncasecmp(tt->p, "bearer", 6) == 0))
    return protocol(f, c, e, r, now, "token_type is not Bearer");
  expires = expires_seconds(&r->expires_in);
  if (expires < 0) return protocol(f, c, e, r, now, "expires_in is not a positive number of seconds");
  if (rt->type != LA_F_ABSENT) {
    if (rt->type != LA_F_STRING || rt->n > LA_TOKEN_MAX || !la_header_safe(rt->p, rt->n))
      return protocol(f, c, e, r, now, "refresh_token is not a usable string");
  }
  if (la_entry_store(e, at->p, at->n, expires, sent_at, c->refresh_skew) != 0)
    return fail_config(f, "out of memory storing the token");
  /* a new refresh token replaces the old one (Okta rotates them); none keeps the old one */
  if (rt->type == LA_F_STRING && !(e->refresh.p && e->refresh.n == rt->n &&
                                   memcmp(e->refresh.p, rt->p, rt->n) == 0)) {
    if (la_secret_set(&e->refresh, rt->p, rt->n) != 0)
      return fail_config(f, "out of memory storing the refresh token");
    f->rotated = 1;
    note(f, LA_LOG_INFO, "refresh token rotated (%s grant)", la_grant_name(f->sent));
  } else {
    note(f, LA_LOG_DEBUG, "token obtained (%s grant), valid %.0f s", la_grant_name(f->sent),
         la_entry_seconds_left(e, now));
  }
  return act(LA_ACT_USE, 0);
}

la_action la_flow_response(la_flow *f, const la_creds *c, la_entry *e, const la_response *r,
                           int64_t sent_at, int64_t now) {
  int has_code = r->body_problem == NULL && r->error.type == LA_F_STRING && r->error.n > 0;
  f->rotated = 0;
  f->note_level = LA_LOG_NONE;
  f->attempts++;
  la_error_reset(&f->err);
  if (r->transport.kind != LA_ERR_NONE) {
    f->err = r->transport;
    return failed(f, c, e, now);
  }
  if (r->status >= 200 && r->status < 300 && !has_code) return success(f, c, e, r, sent_at, now);

  f->err.status = r->status;
  f->err.retry_after = r->retry_after;
  copy_text(f->err.error, sizeof f->err.error, "", &r->error, NULL, NULL, c, e);
  copy_text(f->err.description, sizeof f->err.description, "", &r->error_description, NULL, NULL,
            c, e);
  copy_text(f->err.uri, sizeof f->err.uri, "", &r->error_uri, NULL, NULL, c, e);

  if (has_code && r->status < 500 && r->status != 429) {
    /* RFC 6749 error: permanent */
    char prefix[96];
    f->err.kind = LA_ERR_OAUTH;
    f->err.retryable = 0;
    snprintf(prefix, sizeof prefix, "token request (%s grant) rejected, HTTP %ld: ",
             la_grant_name(f->sent), r->status);
    /* formatted from the raw fields and redacted as a whole */
    copy_text(f->err.message, sizeof f->err.message, prefix, &r->error, ": ",
              &r->error_description, c, e);
    if (f->sent == LA_GRANT_REFRESH && is_str(&r->error, "invalid_grant")) {
      la_secret_clear(&e->refresh); /* dead: never send it again */
      /* exactly one password login, and never a second password grant after invalid_grant */
      if (c->grant == LA_GRANT_PASSWORD && c->password.p != NULL && !f->fallback_used) {
        f->fallback_used = 1;
        note(f, LA_LOG_WARN, "refresh token rejected (invalid_grant): logging in again with the "
             "password grant, once");
        return send_grant(f, LA_GRANT_PASSWORD);
      }
    }
    return failed(f, c, e, now);
  }
  if (r->status >= 300 && r->status < 400) {
    la_error_set(&f->err, LA_ERR_HTTP, 0,
                 "token request (%s grant): HTTP %ld redirect not followed (redirects could "
                 "carry credentials elsewhere); check token_url",
                 la_grant_name(f->sent), r->status);
    return failed(f, c, e, now);
  }
  /* 429, 5xx, a 4xx without an error code, or an odd status: transient */
  la_error_set(&f->err, LA_ERR_HTTP, r->status == 429 || r->status >= 500 ||
                                         (r->status >= 400 && r->status < 500),
               "token request (%s grant) failed: HTTP %ld%s%s", la_grant_name(f->sent),
               r->status, f->err.error[0] ? " " : "", f->err.error);
  return failed(f, c, e, now);
}
