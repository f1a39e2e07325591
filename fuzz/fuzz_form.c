/* fuzz_form.c - libFuzzer harness for form.c and la_redact (error.c): la_urlencode,
 * la_basic_auth, la_header_safe and la_redact on arbitrary bytes, each checked against a simple
 * reference with abort() on a mismatch.
 *
 * Input: [k: 1 byte][data: the rest]; j = k % (len(data) + 1)
 *   la_urlencode, la_header_safe: data
 *   la_basic_auth: id = data[0..j), secret = data[j..)
 *   la_redact: secret = data[0..j), text = data[j..) (any bytes, NULs too) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../csrc/lusidauth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what) {
  fprintf(stderr, "fuzz_form: invariant violated: %s\n", what);
  abort();
}

static int unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1; /* la_urlencode writes upper-case hex only */
}

/* Decodes form-urlencoding strictly into out (at least n bytes); returns the length. */
static size_t form_decode(const char *s, size_t n, char *out) {
  size_t i, o = 0;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (unreserved(c)) {
      out[o++] = (char)c;
    } else if (c == '+') {
      out[o++] = ' ';
    } else if (c == '%' && i + 2 < n) {
      int h = hexval((unsigned char)s[i + 1]), l = hexval((unsigned char)s[i + 2]);
      if (h < 0 || l < 0) fail("urlencode: bad %XX escape");
      out[o++] = (char)(h << 4 | l);
      i += 2;
    } else {
      fail("urlencode: a character outside unreserved, '+' and %XX");
    }
  }
  return o;
}

static void check_urlencode(const char *s, size_t n) {
  la_buf b = {NULL, 0, 0};
  char *dec;
  size_t m;
  if (la_urlencode(&b, s, n) != 0) fail("urlencode: failed");
  if (n > 0 && (b.p == NULL || b.p[b.n] != '\0')) fail("urlencode: buffer not NUL-terminated");
  if (b.n < n || b.n > 3 * n) fail("urlencode: output length out of range");
  dec = malloc(b.n + 1);
  if (dec == NULL) abort();
  m = form_decode(b.p, b.n, dec);
  if (m != n || (n > 0 && memcmp(dec, s, n) != 0)) fail("urlencode: decoding does not round-trip");
  free(dec);
  la_buf_free(&b);
}

static int b64val(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

/* Strict base64 decode (padded, '=' only at the end); returns the length. */
static size_t b64_decode(const char *s, size_t n, unsigned char *out) {
  size_t i, o = 0;
  if (n % 4 != 0) fail("basic: base64 length is not a multiple of 4");
  for (i = 0; i < n; i += 4) {
    int v[4], k, pad = 0;
    for (k = 0; k < 4; k++) {
      unsigned char c = (unsigned char)s[i + k];
      if (c == '=') {
        if (i + 4 != n || k < 2) fail("basic: '=' before the end");
        pad++;
        v[k] = 0;
      } else {
        if (pad) fail("basic: a character after '='");
        v[k] = b64val(c);
        if (v[k] < 0) fail("basic: a character outside the base64 alphabet");
      }
    }
    out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
    if (pad < 2) out[o++] = (unsigned char)((v[1] & 15) << 4 | v[2] >> 2);
    if (pad < 1) out[o++] = (unsigned char)((v[2] & 3) << 6 | v[3]);
  }
  return o;
}

static void check_basic(const char *id, size_t idn, const char *sec, size_t sn) {
  la_buf b = {NULL, 0, 0};
  unsigned char *plain;
  char *dec;
  const unsigned char *colon;
  size_t pn, m;
  if (la_basic_auth(&b, id, idn, sec, sn) != 0) fail("basic: failed");
  if (b.n < 6 || memcmp(b.p, "Basic ", 6) != 0) fail("basic: no \"Basic \" prefix");
  if (strlen(b.p) != b.n) fail("basic: NUL inside the header value");
  plain = malloc(b.n);
  dec = malloc(b.n + 1);
  if (plain == NULL || dec == NULL) abort();
  pn = b64_decode(b.p + 6, b.n - 6, plain);
  colon = memchr(plain, ':', pn);
  if (colon == NULL) fail("basic: no ':' in the decoded credentials");
  m = form_decode((const char *)plain, (size_t)(colon - plain), dec);
  if (m != idn || (m > 0 && memcmp(dec, id, m) != 0)) fail("basic: the id does not round-trip");
  m = form_decode((const char *)colon + 1, pn - (size_t)(colon - plain) - 1, dec);
  if (m != sn || (m > 0 && memcmp(dec, sec, m) != 0)) fail("basic: the secret does not round-trip");
  free(plain);
  free(dec);
  la_buf_free(&b);
}

static void check_header_safe(const char *s, size_t n) {
  size_t i;
  int ref = n > 0;
  for (i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e) ref = 0;
  if (la_header_safe(s, n) != ref) fail("header_safe: differs from the reference");
}

/* The reference la_redact: the output, plus mark[i] = 1 where out[i] came from "[redacted]". */
static size_t ref_redact(const char *s, size_t len, const char *sec, size_t n, char *out,
                         char *mark) {
  static const char m[] = "[redacted]";
  size_t i = 0, o = 0;
  while (i < len) {
    if (len - i >= n && memcmp(s + i, sec, n) == 0) {
      memcpy(out + o, m, sizeof m - 1);
      memset(mark + o, 1, sizeof m - 1);
      o += sizeof m - 1;
      i += n;
    } else {
      out[o] = s[i++];
      mark[o++] = 0;
    }
  }
  return o;
}

/* la_redact(b, secret) on a buffer holding text[0..tn): a secret shorter than 4 bytes (or longer
 * than the text) leaves it alone; else the result equals the reference, stays NUL-terminated,
 * and no occurrence of the secret is left made only of the text's own bytes (one that runs
 * into a "[redacted]" mark is an artefact: "x[re" in "x[redacted]" tells nothing). */
static void check_redact(const char *sec_in, size_t sn, const char *text, size_t tn) {
  la_buf b = {NULL, 0, 0};
  char *sec, *out, *mark;
  size_t o, i, maxout = tn / 4 * 10 + tn + 1; /* every 4 bytes may become 10 */
  sec = malloc(sn ? sn : 1); /* an exact-size copy: ASan flags a read past the secret */
  out = malloc(maxout);
  mark = malloc(maxout);
  if (sec == NULL || out == NULL || mark == NULL) abort();
  if (sn > 0) memcpy(sec, sec_in, sn);
  if (tn > 0 && la_buf_add(&b, text, tn) != 0) abort();
  if (la_redact(&b, sec, sn) != 0) fail("redact: failed");
  if (b.p != NULL && b.p[b.n] != '\0') fail("redact: buffer not NUL-terminated");
  if (sn < 4 || tn < sn) {
    if (b.n != tn || (tn > 0 && memcmp(b.p, text, tn) != 0))
      fail("redact: changed text it should leave alone");
  } else {
    o = ref_redact(text, tn, sec, sn, out, mark);
    if (b.n != o || memcmp(b.p, out, o) != 0) fail("redact: differs from the reference");
    for (i = 0; i + sn <= o; i++)
      if (memcmp(out + i, sec, sn) == 0 && memchr(mark + i, 1, sn) == NULL)
        fail("redact: the secret still appears");
  }
  la_buf_free(&b);
  free(sec);
  free(out);
  free(mark);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *d;
  size_t n, k;
  if (size < 1) return 0;
  d = (const char *)data + 1;
  n = size - 1;
  k = data[0] % (n + 1);
  check_urlencode(d, n);
  check_header_safe(d, n);
  check_basic(d, k, d + k, n - k);
  check_redact(d, k, d + k, n - k);
  return 0;
}
