/* compat.h - the Lua 5.1 / 5.2 / 5.3 / 5.4 / LuaJIT differences lusidauth uses, and nothing else. */
#ifndef LUSIDAUTH_COMPAT_H
#define LUSIDAUTH_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

/* LuaJIT 2.1 ships the 5.2 auxiliary functions below; it defines luaL_newlib as a marker. */
#if LUA_VERSION_NUM >= 502 || defined(luaL_newlib)
#define la_setfuncs luaL_setfuncs
#else
void la_setfuncs(lua_State *L, const luaL_Reg *l, int nup);
#endif

/* One table of Lua values attached to a userdata (callbacks, the cached token string). */
#if LUA_VERSION_NUM >= 504
#define la_newuserdata(L, sz) lua_newuserdatauv((L), (sz), 2)
#define la_getuv(L, idx) ((void)lua_getiuservalue((L), (idx), 1))
#define la_setuv(L, idx) ((void)lua_setiuservalue((L), (idx), 1))
/* 5.4 has room for a second user value: the client's token string, one call away */
#define LA_UV2 1
#define la_getuv2(L, idx) ((void)lua_getiuservalue((L), (idx), 2))
#define la_setuv2(L, idx) ((void)lua_setiuservalue((L), (idx), 2))
#elif LUA_VERSION_NUM >= 502
#define la_newuserdata(L, sz) lua_newuserdata((L), (sz))
#define la_getuv(L, idx) ((void)lua_getuservalue((L), (idx)))
#define la_setuv(L, idx) lua_setuservalue((L), (idx))
#else
#define la_newuserdata(L, sz) lua_newuserdata((L), (sz))
#define la_getuv(L, idx) lua_getfenv((L), (idx))
#define la_setuv(L, idx) ((void)lua_setfenv((L), (idx)))
#endif

#if LUA_VERSION_NUM >= 502
#define la_rawlen lua_rawlen
#else
#define la_rawlen lua_objlen
#endif

/* Whole seconds as a Lua value: an integer where the VM has them, else a number. */
#if LUA_VERSION_NUM >= 503
#define la_pushseconds(L, s) lua_pushinteger((L), (lua_Integer)(s))
#else
#define la_pushseconds(L, s) lua_pushnumber((L), (lua_Number)(long long)(s))
#endif

#endif
