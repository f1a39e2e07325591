/* form.c - the encodings a token request needs: form-urlencoding, HTTP Basic, header safety. */
#include <string.h>

#include "lusidauth.h"

/* application/x-www-form-urlencoded: unreserved characters stay, space is '+', the rest %XX. */
int la_urlencode(la_buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char out[3];
    size_t k = 0;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out[k++] = (char)c;
    } else if (c == ' ') {
      out[k++] = '+';
    } else {
      out[k++] = '%';
      out[k++] = hex[c >> 4];
      out[k++] = hex[c & 15];
    }
    if (la_buf_add(b, out, k) != 0) return -1;
  }
  return 0;
}

/* Appends "&name=value" (no '&' for the first pair), value urlencoded. */
int la_form_add(la_buf *b, const char *name, const char *value, size_t n) {
  if (b->n > 0 && la_buf_add(b, "&", 1) != 0) return -1;
  if (la_buf_addstr(b, name) != 0 || la_buf_add(b, "=", 1) != 0) return -1;
  return la_urlencode(b, value, n);
}

static int la_base64(la_buf *b, const char *s, size_t n) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const unsigned char *u = (const unsigned char *)s;
  size_t i;
  for (i = 0; i < n; i += 3) {
    unsigned long v = (unsigned long)u[i] << 16;
    char out[4];
    if (i + 1 < n) v |= (unsigned long)u[i + 1] << 8;
    if (i + 2 < n) v |= u[i + 2];
    out[0] = tab[(v >> 18) & 63];
    out[1] = tab[(v >> 12) & 63];
    out[2] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
    out[3] = i + 2 < n ? tab[v & 63] : '=';
    if (la_buf_add(b, out, 4) != 0) return -1;
  }
  return 0;
}

/* "Basic " base64(urlencode(id) ":" urlencode(secret)), as RFC 6749 section 2.3.1 asks. */
int la_basic_auth(la_buf *b, const char *id, size_t idn, const char *secret, size_t sn) {
  la_buf plain = {NULL, 0, 0};
  int rc = -1;
  if (la_urlencode(&plain, id, idn) == 0 && la_buf_add(&plain, ":", 1) == 0 &&
      la_urlencode(&plain, secret, sn) == 0 && la_buf_addstr(b, "Basic ") == 0 &&
      la_base64(b, plain.p, plain.n) == 0)
    rc = 0;
  la_buf_free(&plain);
  return rc;
}

/* A token may go into a header only if it is non-empty visible ASCII: no space, no control. */
int la_header_safe(const char *s, size_t n) {
  size_t i;
  if (n == 0) return 0;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= 0x20 || c >= 0x7f) return 0;
  }
  return 1;
}
