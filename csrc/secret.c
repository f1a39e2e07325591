/* secret.c - secrets live in buffers of our own, wiped when replaced or freed. */
#define _DEFAULT_SOURCE
#include <stdlib.h>
#include <string.h>

#include "lusidauth.h"

void la_wipe(void *p, size_t n) {
  if (p != NULL && n > 0) explicit_bzero(p, n);
}

/* Copies p[0..n) into a new NUL-terminated buffer; the old one is wiped. 0, or -1 when out of memory. */
int la_secret_set(la_secret *s, const char *p, size_t n) {
  char *q = malloc(n + 1);
  if (q == NULL) return -1;
  memcpy(q, p, n);
  q[n] = '\0';
  la_secret_clear(s);
  s->p = q;
  s->n = n;
  return 0;
}

void la_secret_clear(la_secret *s) {
  if (s->p != NULL) {
    la_wipe(s->p, s->n);
    free(s->p);
  }
  s->p = NULL;
  s->n = 0;
}

/* Growing never leaves an unwiped copy behind: the old block is wiped before it is freed. */
int la_buf_add(la_buf *b, const char *p, size_t n) {
  if (n > LA_BODY_CAP * 4 || b->n + n + 1 < b->n) return -1;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    char *q;
    while (cap < b->n + n + 1) cap *= 2;
    q = malloc(cap);
    if (q == NULL) return -1;
    if (b->p != NULL) {
      memcpy(q, b->p, b->n);
      la_wipe(b->p, b->cap);
      free(b->p);
    }
    b->p = q;
    b->cap = cap;
  }
  if (n > 0) memcpy(b->p + b->n, p, n);
  b->n += n;
  b->p[b->n] = '\0';
  return 0;
}

int la_buf_addstr(la_buf *b, const char *s) { return la_buf_add(b, s, strlen(s)); }

void la_buf_free(la_buf *b) {
  if (b->p != NULL) {
    la_wipe(b->p, b->cap);
    free(b->p);
  }
  b->p = NULL;
  b->n = b->cap = 0;
}
