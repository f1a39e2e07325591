/* response.h - decoding a token response (response.c). */
#ifndef LUSIDAUTH_RESPONSE_H
#define LUSIDAUTH_RESPONSE_H

#include <time.h>

#include "lusidauth.h"

struct lua_State;
LA_HIDDEN void la_response_open(struct lua_State *L);
LA_HIDDEN void la_response_decode(struct lua_State *L, const char *body, size_t n, la_response *r);
LA_HIDDEN double la_retry_after(long status, const char *retry_after, const char *rate_reset,
                                time_t now);

#endif
