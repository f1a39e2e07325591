/* core.c - luaopen_lusidauth_core: the one exported symbol; starts libcurl once per process. */
#include "compat.h"
#include "http.h"
#include "lusidauth.h"
#include "response.h"

#if LUA_VERSION_NUM < 502 && !defined(luaL_newlib)
void la_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  for (; l->name != NULL; l++) {
    int i;
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
#endif

#if defined(__GNUC__)
#define LA_EXPORT __attribute__((visibility("default")))
#else
#define LA_EXPORT
#endif

LA_EXPORT int luaopen_lusidauth_core(lua_State *L);

LA_EXPORT int luaopen_lusidauth_core(lua_State *L) {
  la_http_global_init();
  la_response_open(L);
  la_error_open(L);
  lua_newtable(L);
  lua_pushliteral(L, LA_VERSION);
  lua_setfield(L, -2, "_VERSION");
  luaL_getmetatable(L, LA_ERROR_MT);
  lua_setfield(L, -2, "error_mt");
  la_client_open(L);
  la_step_open(L);
  return 1;
}
