rockspec_format = "3.0"
package = "lusidauth"
version = "scm-1"
source = {
  url = "git+https://example.invalid/lusidauth.git",
}
description = {
  summary = "OAuth 2.0 tokens for the LUSID API, from Lua",
  detailed = [[
    lusidauth logs in to the Okta token endpoint in front of LUSID (password, refresh-token and
    client-credentials grants) or uses a personal access token, caches the token in C with a
    monotonic expiry, refreshes it before it expires, and builds the Authorization header.
    A C extension over libcurl; JSON through lua-cjson.
  ]],
  license = "MIT",
  labels = { "oauth2", "okta", "lusid", "authentication" },
}
dependencies = {
  "lua >= 5.1, < 5.5",
  "lua-cjson",
}
external_dependencies = {
  -- library only: Debian keeps curl/curl.h under a multiarch include dir that luarocks 3.8
  -- does not search (the compiler does), so a header check would fail there.
  CURL = { library = "curl" },
  OPENSSL = { library = "crypto" }, -- PBKDF2 and SHA-256 for the stores
  LIBSSL = { library = "ssl" },      -- TLS to Redis
  HIREDIS = { header = "hiredis/hiredis.h", library = "hiredis" }, -- the Redis store
}
build = {
  type = "builtin",
  modules = {
    ["lusidauth"] = "lua/lusidauth/init.lua",
    ["lusidauth.config"] = "lua/lusidauth/config.lua",
    ["lusidauth.headers"] = "lua/lusidauth/headers.lua",
    ["lusidauth.request"] = "lua/lusidauth/request.lua",
    ["lusidauth.resty"] = "lua/lusidauth/resty.lua",
    ["lusidauth.resty_store"] = "lua/lusidauth/resty_store.lua",
    ["lusidauth.core"] = {
      sources = {
        "csrc/core.c", "csrc/client.c", "csrc/options.c", "csrc/api.c",
        "csrc/step.c", "csrc/store.c", "csrc/store_file.c", "csrc/store_redis.c", "csrc/flow.c",
        "csrc/cache.c", "csrc/http.c",
        "csrc/response.c", "csrc/secret.c", "csrc/form.c", "csrc/error.c",
      },
      libraries = { "curl", "ssl", "crypto", "hiredis", "pthread" },
      incdirs = { "$(CURL_INCDIR)", "$(OPENSSL_INCDIR)", "$(HIREDIS_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(OPENSSL_LIBDIR)", "$(LIBSSL_LIBDIR)", "$(HIREDIS_LIBDIR)" },
    },
  },
}
build.install = { bin = { lusidauth = "bin/lusidauth" } }
test = {
  type = "command",
  command = "make check",
}
