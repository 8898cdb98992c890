-- common.lua: helpers every function of the library shares (defined once, above them).

-- Server time in epoch milliseconds: no client clock decides anything.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A decimal string of a whole number (Lua's %d keeps integers exact up to 2^53).
local function fmt_int(n)
  return string.format('%d', n)
end

-- The seven coordinator keys of one group (cfg, state, members, hb, target, owners,
-- instances): a key of the wrong type (written by someone else) must stop a call before any
-- write. Returns an error reply, or nil when every key is absent or of its type.
local GROUP_KEY_TYPES = {'hash', 'hash', 'hash', 'zset', 'hash', 'hash', 'hash'}
local function group_key_type_error(keys)
  for i = 1, 7 do
    local t = redis.call('TYPE', keys[i])['ok']
    if t ~= 'none' and t ~= GROUP_KEY_TYPES[i] then
      return redis.error_reply('WRONGTYPE key ' .. keys[i] .. ' holds a ' .. t .. ', not a ' ..
        GROUP_KEY_TYPES[i] .. ': something else wrote it; delete it or use another namespace')
    end
  end
  return nil
end

-- A new group's state hash. Grant tokens start at the server's clock (x1000), so a deleted
-- and re-created group still issues tokens above any fence an older incarnation left behind.
local function bootstrap_group_state(state_key, now)
  redis.call('HSETNX', state_key, 'grant', fmt_int(now * 1000))
  redis.call('HSETNX', state_key, 'epoch', 0)
  redis.call('HSETNX', state_key, 'target_epoch', 0)
  redis.call('HSETNX', state_key, 'created_ms', fmt_int(now))
end
