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

-- ---- appending records: append.lua (a producer batch) and transact.lua (a pipeline's outputs)
-- Records are arguments in one of two shapes: "0, key, value" (the common one: fields key,
-- value) or "f, then f field/value args" (key, value, h:<name> ...; f even, 2..4096).

-- A count as the server's own parsers take it (no sign, no leading zero), below 10^13.
local function is_count(s)
  return type(s) == 'string' and #s <= 13 and (s == '0' or string.match(s, '^[1-9]%d*$') ~= nil)
end

-- Checks the shapes of n records starting at argv[i] without writing anything. Returns the
-- index after the last record, or nil and what is wrong. Field counts are bounded because
-- unpack() pushes f values on Lua's C stack (about 8,000 slots).
local function scan_records(argv, i, n)
  for r = 1, n do
    local f = argv[i]
    if f == '0' then
      i = i + 3
    else
      local nf = tonumber(f)
      if not nf or nf < 2 or nf > 4096 or nf % 2 ~= 0 then
        return nil, 'record ' .. r .. ' has field count ' .. tostring(f) ..
          ' (want 0 or 2..4096, even)'
      end
      i = i + nf + 1
    end
  end
  if i - 1 > #argv then return nil, n .. ' records need more arguments than were given' end
  return i
end

-- Retention, applied by a batch's own XADDs: MINID ~ on the first, MAXLEN ~ on the last (a
-- one-record batch with both takes turns by ``turn``). Safe retention: MINID ~ "~cut" only,
-- the cut its consumers wrote to ``groups_key``. Returns the first and the last XADD's trim
-- arguments; reads only (the HGET fails on a wrong key type before any write).
local function batch_trims(maxlen_s, retention_ms, safe, groups_key, n, turn, now)
  local maxlen = tonumber(maxlen_s)
  if retention_ms >= now then retention_ms = 0 end  -- a negative MINID is no id
  local minid = retention_ms > 0 and (now - retention_ms) .. '-0' or nil
  if safe then
    local cut = redis.call('HGET', groups_key, '~cut')
    if cut or redis.call('EXISTS', groups_key) == 1 then
      minid, maxlen = cut, 0  -- groups read this partition: only as far as they all got
    end
  end
  local first_trim, last_trim = {}, {}
  if minid then first_trim = {'MINID', '~', minid} end
  if maxlen > 0 then last_trim = {'MAXLEN', '~', maxlen_s} end
  if n == 1 and minid and maxlen > 0 and turn % 2 == 0 then first_trim = last_trim end
  if n == 1 and not first_trim[1] then first_trim = last_trim end
  return first_trim, last_trim
end

-- XADDs n checked records from argv[i] to ``stream``, their ids appended to ``out``. The
-- first record gets the server's id ('*'), the others follow it in the same millisecond
-- (<ms>-<seq+1>, ...), so a batch's ids are known from its first and last. Nothing in here
-- fails on checked arguments and a stream key of the right type. Returns the next index.
local function append_records(out, stream, argv, i, n, first_trim, last_trim)
  local call = redis.call
  local function xadd(trim, id, from, nf)
    local args = {'XADD', stream}
    for _, a in ipairs(trim) do args[#args + 1] = a end
    args[#args + 1] = id
    if nf == 0 then
      args[#args + 1] = 'key'
      args[#args + 1] = argv[from]
      args[#args + 1] = 'value'
      args[#args + 1] = argv[from + 1]
    else
      for k = from, from + nf - 1 do args[#args + 1] = argv[k] end
    end
    return call(unpack(args))
  end
  local f = argv[i]
  local nf = f == '0' and 0 or tonumber(f)
  local first = xadd(first_trim, '*', i + 1, nf)
  out[#out + 1] = first
  i = i + (nf == 0 and 3 or nf + 1)
  local ms, s0 = string.match(first, '^(%d+)-(%d+)$')
  s0 = tonumber(s0)
  -- Beyond 2^52 a Lua number no longer counts exactly: the server numbers the rest ('*').
  local exact = s0 < 4503599627370496
  -- The hot loop: locals instead of global/table lookups, a string test for the common form.
  for r = 2, n do
    local id = exact and ms .. '-' .. string.format('%d', s0 + r - 1) or '*'
    f = argv[i]
    if r == n and last_trim[1] then
      nf = f == '0' and 0 or tonumber(f)
      out[#out + 1] = xadd(last_trim, id, i + 1, nf)
      i = i + (nf == 0 and 3 or nf + 1)
    elseif f == '0' then
      out[#out + 1] = call('XADD', stream, id, 'key', argv[i + 1], 'value', argv[i + 2])
      i = i + 3
    else
      f = tonumber(f)
      out[#out + 1] = call('XADD', stream, id, unpack(argv, i + 1, i + f))
      i = i + f + 1
    end
  end
  return i
end

-- The describe reply of one group (KEYS: the seven group keys; admin.lua's describe and the
-- exporter's read-only scrape.lua share it): {"OK", now_ms, cfg, state, members, owners}.
local function describe_group(keys)
  local members = {}
  local recs = redis.call('HGETALL', keys[3])
  for i = 1, #recs, 2 do
    local id = recs[i]
    members[#members + 1] = id
    members[#members + 1] = recs[i + 1]
    members[#members + 1] = redis.call('ZSCORE', keys[4], id) or '0'
    members[#members + 1] = redis.call('HGET', keys[5], id) or ''
  end
  return {'OK', now_ms(), redis.call('HGETALL', keys[1]), redis.call('HGETALL', keys[2]),
          members, redis.call('HGETALL', keys[6])}
end

-- How many entries of a stream come after id ``after``, counting at most about ``limit``:
-- {count, exact}, exact 0 when counting stopped there (lag.lua, scrape.lua).
local function count_after(stream, after, limit)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if not first then return {0, 1} end
  local n, cur = 0, '(' .. after
  while n < limit do
    local page = redis.call('XRANGE', stream, cur, '+', 'COUNT', 1000)
    n = n + #page
    if #page < 1000 then return {n, 1} end
    cur = '(' .. page[#page][1]
  end
  return {n, 0}
end
