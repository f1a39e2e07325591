/* http.h - the libcurl transport's interface (http.c). */
#ifndef LUSIDAUTH_HTTP_H
#define LUSIDAUTH_HTTP_H

#include <curl/curl.h>

#include "lusidauth.h"

typedef struct la_http_opts {
  double timeout, connect_timeout; /* seconds per attempt */
  double read_timeout;             /* seconds without a byte received; 0: none */
  char *proxy, *proxy_username, *ca_file, *ca_path, *user_agent;
  la_secret proxy_password;
} la_http_opts;

typedef struct la_http_result {
  long status;
  char retry_after[64];   /* the Retry-After header, if any */
  char rate_reset[32];    /* X-Rate-Limit-Reset (Okta), if any */
  int over_cap;           /* the body went past cap */
  int keep_headers;       /* collect the final response's header lines in headers */
  size_t cap;
  la_buf body;
  la_buf headers;
} la_http_result;

typedef struct la_http_req {
  const char *what;       /* names the request in messages: "token request", "LUSID API call" */
  const char *method;
  const char *url;
  struct curl_slist *headers; /* taken over: wiped and freed by la_http_perform */
  const char *body;       /* NULL: no body */
  size_t body_len;
  size_t cap;             /* largest body accepted */
  int keep_headers;
} la_http_req;

LA_HIDDEN void la_http_global_init(void);
LA_HIDDEN int la_http_post(CURL **curlp, const la_http_opts *o, const char *url, const la_buf *form,
                           const la_buf *auth, la_http_result *res, la_error *err);
LA_HIDDEN int la_http_perform(CURL **curlp, const la_http_opts *o, const la_http_req *rq,
                              la_http_result *res, la_error *err);
LA_HIDDEN void la_http_free_headers(struct curl_slist *list);
LA_HIDDEN void la_http_opts_free(la_http_opts *o);

#endif
