/* floor.c - the benchmark floor: a C method that returns a stored string, called exactly the
 * way c:token() is (a method on a userdata with a uservalue), and nothing else. */
#include <lauxlib.h>
#include <lua.h>

#if LUA_VERSION_NUM >= 504
#define newud(L, n) lua_newuserdatauv((L), (n), 1)
#define getuv(L, i) ((void)lua_getiuservalue((L), (i), 1))
#define setuv(L, i) ((void)lua_setiuservalue((L), (i), 1))
#elif LUA_VERSION_NUM >= 502
#define newud(L, n) lua_newuserdata((L), (n))
#define getuv(L, i) ((void)lua_getuservalue((L), (i)))
#define setuv(L, i) lua_setuservalue((L), (i))
#else
#define newud(L, n) lua_newuserdata((L), (n))
#define getuv(L, i) lua_getfenv((L), (i))
#define setuv(L, i) ((void)lua_setfenv((L), (i)))
#endif

static int floor_get(lua_State *L) {
  getuv(L, 1);
  lua_rawgeti(L, -1, 1);
  return 1;
}

static int floor_new(lua_State *L) {
  luaL_checkstring(L, 1);
  newud(L, 1);
  luaL_getmetatable(L, "benchfloor");
  lua_setmetatable(L, -2);
  lua_createtable(L, 1, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  setuv(L, -2);
  return 1;
}

int luaopen_benchfloor(lua_State *L);
int luaopen_benchfloor(lua_State *L) {
  luaL_newmetatable(L, "benchfloor");
  lua_newtable(L);
  lua_pushcfunction(L, floor_get);
  lua_setfield(L, -2, "get");
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, floor_new);
  lua_setfield(L, -2, "new");
  return 1;
}
