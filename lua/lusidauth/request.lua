-- lusidauth.request: c:request{...}, a LUSID API call through the client's libcurl handle, with
-- the client's token and headers, and one retry with a new token after a 401.
local core = require "lusidauth.core"
local cjson = require "cjson.safe"
local headers = require "lusidauth.headers"

local R = {}

local function escape(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- "https://x/api" + "/api/portfolios" -> "https://x/api/api/portfolios": one slash between.
function R.join(base, path)
  return (base:gsub("/+$", "")) .. "/" .. (path:gsub("^/+", ""))
end

-- { b = 2, a = { 1, 2 } } -> "a=1&a=2&b=2" (sorted, so requests are reproducible)
function R.query(q)
  local keys, parts = {}, {}
  for k in pairs(q) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = q[k]
    if type(v) ~= "table" then v = { v } end
    for _, x in ipairs(v) do
      local t = type(x)
      if t ~= "string" and t ~= "number" and t ~= "boolean" then
        error(("lusidauth: request query value for '%s' must be a string, number or boolean, not %s"):format(k, t), 4)
      end
      parts[#parts + 1] = escape(k) .. "=" .. escape(x)
    end
  end
  return table.concat(parts, "&")
end

-- s with every occurrence of token replaced: a server may echo the request in its error.
local function redact(s, token)
  if type(s) ~= "string" or not token or #token < 4 then return s end
  local out, i = {}, 1
  while true do
    local a, b = s:find(token, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1) .. "[redacted]"
    i = b + 1
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

local function api_error(resp, method, path, token)
  local j = type(resp.json) == "table" and resp.json or {}
  local e = {
    kind = "http",
    status = resp.status,
    retryable = resp.status == 429 or resp.status >= 500,
    response = resp,
    retry_after = tonumber(resp.headers["retry-after"] or ""),
  }
  -- a LUSID error body: name, errorDetails, code, title, detail, instance
  for _, k in ipairs { "name", "code", "title", "detail", "instance" } do
    if type(j[k]) == "string" or type(j[k]) == "number" then e[k] = redact(j[k], token) end
  end
  if type(j.errorDetails) == "table" then e.error_details = j.errorDetails end
  local what = e.name and (" " .. tostring(e.name)) or ""
  if e.title then what = what .. ": " .. tostring(e.title) end
  if e.detail and e.detail ~= e.title then what = what .. " (" .. tostring(e.detail) .. ")" end
  e.message = ("LUSID API %s %s: HTTP %d%s"):format(method, path, resp.status, (what:gsub("[%c]", " ")))
  return setmetatable(e, core.error_mt)
end

local function check_request(self, req)
  if type(req) ~= "table" then
    error("lusidauth: request expects a table, got " .. type(req), 3)
  end
  local method = req.method or "GET"
  if type(method) ~= "string" then error("lusidauth: request method must be a string", 3) end
  method = method:upper()
  if (req.path == nil) == (req.url == nil) then
    error("lusidauth: request needs exactly one of path and url", 3)
  end
  local url, shown = req.url, req.url
  if req.path ~= nil then
    if type(req.path) ~= "string" then error("lusidauth: request path must be a string", 3) end
    local api_url = core.info(self).api_url
    if not api_url then
      error("lusidauth: request{ path = ... } needs the client's api_url option (or pass url)", 3)
    end
    url, shown = R.join(api_url, req.path), req.path
  elseif type(url) ~= "string" then
    error("lusidauth: request url must be a string", 3)
  end
  if req.query ~= nil then
    if type(req.query) ~= "table" then error("lusidauth: request query must be a table", 3) end
    local q = R.query(req.query)
    if q ~= "" then url = url .. (url:find("?", 1, true) and "&" or "?") .. q end
  end
  local body, extra = req.body, req.headers
  if extra ~= nil and type(extra) ~= "table" then error("lusidauth: request headers must be a table", 3) end
  if req.json ~= nil then
    if body ~= nil then error("lusidauth: request takes json or body, not both", 3) end
    local err
    body, err = cjson.encode(req.json)
    if not body then error("lusidauth: request json cannot be encoded: " .. tostring(err), 3) end
  elseif body ~= nil and type(body) ~= "string" then
    error("lusidauth: request body must be a string", 3)
  end
  if body ~= nil then
    local has_type = false
    for k in pairs(extra or {}) do
      if type(k) == "string" and k:lower() == "content-type" then has_type = true end
    end
    if not has_type then
      local h = { ["Content-Type"] = "application/json" }
      for k, v in pairs(extra or {}) do h[k] = v end
      extra = h
    end
  end
  return method, url, shown, body, extra
end

-- c:request{ method, path | url, query, json | body, headers } --> response | nil, err
function R.request(self, req)
  local method, url, shown, body, extra = check_request(self, req)
  local retried = false
  while true do
    local h, err = self:headers(extra)
    if not h then return nil, err end
    local status, rh, rbody = core.request(self, method, url, headers.lines(h), body)
    if not status then return nil, rh end
    -- a 401 means the token died early (revoked, clock skew): one retry with a new token
    if status == 401 and not retried and core.info(self).grant ~= "pat" then
      retried = true
      self:invalidate()
    else
      local resp = { status = status, headers = rh, body = rbody }
      local ctype = rh["content-type"] or ""
      if rbody ~= "" and ctype:find("json", 1, true) then
        local j = cjson.decode(rbody)
        if j ~= nil then resp.json = j end
      end
      if status >= 400 then return nil, api_error(resp, method, shown, h.Authorization:sub(8)) end
      return resp
    end
  end
end

return R
