/* http.c - the libcurl transport: one reused easy handle per client (keep-alive), timeouts from
 * the options, redirects never followed, TLS always verified, bodies capped at LA_BODY_CAP. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* curl_global_init is not thread-safe on older libcurl: run it once per process. */
void la_http_global_init(void) { pthread_once(&global_once, global_init); }

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  la_http_result *res = ud;
  size_t len = size * n;
  if (res->body.n + len > res->cap) {
    res->over_cap = 1;
    return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
  }
  return la_buf_add(&res->body, p, len) == 0 ? len : 0;
}

/* Keeps a header's value, trimmed, if it is the one named. */
static void keep_header(const char *line, size_t len, const char *name, char *dst, size_t cap) {
  size_t nl = strlen(name), i, j;
  if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':') return;
  i = nl + 1;
  while (i < len && (line[i] == ' ' || line[i] == '\t')) i++;
  j = len;
  while (j > i && (line[j - 1] == '\r' || line[j - 1] == '\n' || line[j - 1] == ' ')) j--;
  if (j - i >= cap) j = i + cap - 1;
  memcpy(dst, line + i, j - i);
  dst[j - i] = '\0';
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  la_http_result *res = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) { /* a new response (after a 100): start over */
    res->retry_after[0] = res->rate_reset[0] = '\0';
    res->headers.n = 0;
  }
  if (res->keep_headers && res->headers.n + len < 256 * 1024 && la_buf_add(&res->headers, p, len) != 0)
    return 0;
  keep_header(p, len, "Retry-After", res->retry_after, sizeof res->retry_after);
  keep_header(p, len, "X-Rate-Limit-Reset", res->rate_reset, sizeof res->rate_reset);
  return len;
}

static int error_kind(CURLcode rc, int *retryable) {
  *retryable = 1;
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT:
    return LA_ERR_TIMEOUT;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CRL_BADFILE:
    *retryable = 0;
    return LA_ERR_TLS;
  case CURLE_URL_MALFORMAT:
    *retryable = 0;
    return LA_ERR_CONFIG;
  default:
    return LA_ERR_NETWORK;
  }
}

/* Sets the options that do not change between requests; returns a CURLcode. */
static CURLcode configure(CURL *h, const la_http_opts *o) {
  CURLcode rc = CURLE_OK;
#define SET(opt, val) \
  if (rc == CURLE_OK) rc = curl_easy_setopt(h, opt, val)
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_FOLLOWLOCATION, 0L);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_SSL_VERIFYPEER, 1L);
  SET(CURLOPT_SSL_VERIFYHOST, 2L);
  SET(CURLOPT_CONNECTTIMEOUT_MS, (long)(o->connect_timeout * 1000));
  SET(CURLOPT_TIMEOUT_MS, (long)(o->timeout * 1000));
  if (o->read_timeout > 0) { /* no byte for this long: give up */
    SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
    SET(CURLOPT_LOW_SPEED_TIME, (long)(o->read_timeout + 0.999));
  }
  SET(CURLOPT_USERAGENT, o->user_agent);
  if (o->ca_file) SET(CURLOPT_CAINFO, o->ca_file);
  if (o->ca_path) SET(CURLOPT_CAPATH, o->ca_path);
  if (o->proxy) SET(CURLOPT_PROXY, o->proxy);
  if (o->proxy_username) SET(CURLOPT_PROXYUSERNAME, o->proxy_username);
  if (o->proxy_password.p) SET(CURLOPT_PROXYPASSWORD, o->proxy_password.p);
#undef SET
  return rc;
}

/* Wipes the header strings (one holds the credentials) before freeing them. */
void la_http_free_headers(struct curl_slist *list) {
  struct curl_slist *i;
  for (i = list; i != NULL; i = i->next) la_wipe(i->data, strlen(i->data));
  curl_slist_free_all(list);
}

static CURL *handle(CURL **curlp, const la_http_opts *o, la_error *err) {
  CURLcode rc;
  if (*curlp != NULL) return *curlp;
  if ((*curlp = curl_easy_init()) == NULL) {
    la_error_set(err, LA_ERR_NETWORK, 1, "could not start libcurl");
    return NULL;
  }
  if ((rc = configure(*curlp, o)) != CURLE_OK) {
    la_error_set(err, LA_ERR_CONFIG, 0, "libcurl refused an option: %s", curl_easy_strerror(rc));
    curl_easy_cleanup(*curlp); /* never reuse a half-configured handle */
    *curlp = NULL;
    return NULL;
  }
  return *curlp;
}

/* Performs one request. Returns 0 with res->status set, or -1 with err set (no usable
 * response). Frees rq->headers, wiping them first. */
int la_http_perform(CURL **curlp, const la_http_opts *o, const la_http_req *rq,
                    la_http_result *res, la_error *err) {
  char errbuf[CURL_ERROR_SIZE];
  CURLcode rc;
  CURL *h = handle(curlp, o, err);
  int retryable, kind;

  res->status = 0;
  res->over_cap = 0;
  res->cap = rq->cap;
  res->keep_headers = rq->keep_headers;
  res->retry_after[0] = res->rate_reset[0] = '\0';
  if (h == NULL) {
    la_http_free_headers(rq->headers);
    return -1;
  }
  errbuf[0] = '\0';
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_URL, rq->url);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, rq->headers);
  curl_easy_setopt(h, CURLOPT_HTTPGET, 1L); /* resets the method of the previous request */
  if (strcmp(rq->method, "HEAD") == 0) {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (rq->body != NULL || strcmp(rq->method, "POST") == 0) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, rq->body != NULL ? rq->body : "");
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)rq->body_len);
  }
  if (strcmp(rq->method, "GET") != 0 && strcmp(rq->method, "POST") != 0 &&
      strcmp(rq->method, "HEAD") != 0)
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, rq->method);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, res);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, res);
  rc = curl_easy_perform(h);
  /* nothing of this request may outlive it in the handle */
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, NULL);
  curl_easy_setopt(h, CURLOPT_NOBODY, 0L);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
  la_http_free_headers(rq->headers);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &res->status);

  if (rc == CURLE_OK) return 0;
  if (res->over_cap) {
    la_error_set(err, LA_ERR_PROTOCOL, 0, "%s: response body exceeds %lu bytes", rq->what,
                 (unsigned long)rq->cap);
    err->status = res->status;
    return -1;
  }
  kind = error_kind(rc, &retryable);
  la_error_set(err, kind, retryable, "%s to %s failed: %s", rq->what, rq->url,
               errbuf[0] ? errbuf : curl_easy_strerror(rc));
  return -1;
}

/* POSTs a token request's form, with the Basic header when there is one. */
int la_http_post(CURL **curlp, const la_http_opts *o, const char *url, const la_buf *form,
                 const la_buf *auth, la_http_result *res, la_error *err) {
  struct curl_slist *headers = NULL, *tmp;
  char line[LA_TOKEN_MAX + 64];
  la_http_req rq;

  tmp = curl_slist_append(headers, "Content-Type: application/x-www-form-urlencoded");
  if (tmp) tmp = curl_slist_append(headers = tmp, "Accept: application/json");
  if (tmp) tmp = curl_slist_append(headers = tmp, "Expect:");
  if (tmp && auth != NULL && auth->n > 0 && auth->n + 16 < sizeof line) {
    memcpy(line, "Authorization: ", 15);
    memcpy(line + 15, auth->p, auth->n + 1);
    tmp = curl_slist_append(headers = tmp, line);
    la_wipe(line, sizeof line);
  }
  if (tmp == NULL) {
    la_http_free_headers(headers);
    la_error_set(err, LA_ERR_NETWORK, 1, "token request: out of memory");
    return -1;
  }
  memset(&rq, 0, sizeof rq);
  rq.what = "token request";
  rq.method = "POST";
  rq.url = url;
  rq.headers = tmp;
  rq.body = form->p != NULL ? form->p : "";
  rq.body_len = form->n;
  rq.cap = LA_BODY_CAP;
  return la_http_perform(curlp, o, &rq, res, err);
}

void la_http_opts_free(la_http_opts *o) {
  free(o->proxy);
  free(o->proxy_username);
  free(o->ca_file);
  free(o->ca_path);
  free(o->user_agent);
  la_secret_clear(&o->proxy_password);
  memset(o, 0, sizeof *o);
}
