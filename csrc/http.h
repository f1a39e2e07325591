/* http.h - the libcurl transport's interface (http.c). */
#ifndef LUSIDAUTH_HTTP_H
#define LUSIDAUTH_HTTP_H

#include <curl/curl.h>

#include "lusidauth.h"

typedef struct la_http_opts {
  double timeout, connect_timeout; /* seconds per attempt */
  char *proxy, *proxy_username, *ca_file, *ca_path, *user_agent;
  la_secret proxy_password;
} la_http_opts;

typedef struct la_http_result {
  long status;
  char retry_after[64];   /* the Retry-After header, if any */
  char rate_reset[32];    /* X-Rate-Limit-Reset (Okta), if any */
  int over_cap;           /* the body went past LA_BODY_CAP */
  la_buf body;
} la_http_result;

LA_HIDDEN void la_http_global_init(void);
LA_HIDDEN int la_http_post(CURL **curlp, const la_http_opts *o, const char *url, const la_buf *form,
                           const la_buf *auth, la_http_result *res, la_error *err);
LA_HIDDEN void la_http_opts_free(la_http_opts *o);

#endif
