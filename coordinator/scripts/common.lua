-- common.lua: helpers every function of the library shares (defined once, above them).

-- Server time in epoch milliseconds: no client clock decides anything.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
