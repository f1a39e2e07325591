/* redaction_gaps.c - reproduces the copy_text (flow.c) redaction gaps: a server's error text that
 * echoes a secret reaches err.description / err.message in a changed form. Cases 1 and 3 are
 * open; case 2 (a secret cut by truncation) was fixed by redacting before cutting, and stays
 * here as a regression check. fuzz_response cannot see 1 and 3: its secrets hold no control
 * character and no ": ".
 * Build and run from the repo root (after make -f fuzz/Makefile fuzz-build):
 *   make -f fuzz/Makefile fuzz-gaps, or by hand:
 *   clang -g -fsanitize=address,undefined,fuzzer-no-link $(pkg-config --cflags lua5.4) \
 *     fuzz/crashes/redaction_gaps.c build/fuzz/obj/?*.o -llua5.4 -lcurl -lpthread -lm -o build/fuzz/gaps
 *   ./build/fuzz/gaps      # exit 1 and "LEAK" lines while a gap is open */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "../../csrc/lusidauth.h"
#include "../../csrc/response.h"

static lua_State *L;
static int leaks;

static int open_response(lua_State *l) {
  la_response_open(l);
  return 0;
}

/* One password-grant login answered by (status, body); reports whether `needle` (a secret, or
 * what is left of it) reaches the error the caller gets. */
static void run(const char *what, const char *password, const char *body, const char *needle) {
  la_creds c;
  la_entry e;
  la_flow f;
  la_response r;
  const int64_t now = 1000000000000LL;
  memset(&c, 0, sizeof c);
  memset(&e, 0, sizeof e);
  memset(&r, 0, sizeof r);
  c.grant = LA_GRANT_PASSWORD;
  c.deadline = 60;
  c.max_retry_wait = 30;
  if (la_secret_set(&c.password, password, strlen(password)) != 0) return;
  la_error_reset(&r.transport);
  r.retry_after = -1;
  r.status = 400;
  la_response_decode(L, body, strlen(body), &r);
  (void)la_flow_start(&f, &c, &e, LA_MODE_LOGIN, now, 1);
  (void)la_flow_response(&f, &c, &e, &r, now, now);
  if (strstr(f.err.description, needle) != NULL || strstr(f.err.message, needle) != NULL) {
    const char *m = f.err.message;
    size_t n = strlen(m);
    printf("LEAK %s: \"%s\" in err.%s; message ends \"...%s\"\n", what, needle,
           strstr(f.err.description, needle) ? "description" : "message", m + (n > 40 ? n - 40 : 0));
    leaks++;
  } else {
    printf("ok   %s\n", what);
  }
  lua_settop(L, 0);
  la_entry_clear(&e);
  la_secret_clear(&c.password);
}

int main(void) {
  char body[2048];
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_pushcfunction(L, open_response);
  lua_call(L, 0, 0);

  /* 1: control characters become ' ' before the redaction, so the secret no longer matches */
  run("password with a TAB, echoed", "hunter2\tsecret-pw",
      "{\"error\":\"invalid_grant\",\"error_description\":\"bad password hunter2\\tsecret-pw\"}",
      "hunter2 secret-pw");

  /* 2: the field is cut to its buffer (511 bytes) before the redaction: a prefix survives */
  snprintf(body, sizeof body,
           "{\"error\":\"invalid_grant\",\"error_description\":\"%0500d%s\"}", 0,
           "S3cretPassw0rdLong");
  run("password cut by the 511-byte description", "S3cretPassw0rdLong", body, "S3cretPassw");

  /* 3: a secret holding ": " rebuilt by message = error ": " description */
  run("password split over error and description", "Abcd: efgh-pw",
      "{\"error\":\"Abcd\",\"error_description\":\"efgh-pw\"}", "Abcd: efgh-pw");

  lua_close(L);
  return leaks ? 1 : 0;
}
