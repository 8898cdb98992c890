-- Append one producer batch to one partition, atomically, and apply retention.
-- KEYS[1]  {ns}:t:{<topic>:<p>}        stream  the partition
-- KEYS[2]  {ns}:t:{<topic>:<p>}:seq    hash    producer id -> "seq first_id last_id ms"
-- KEYS[3]  {ns}:t:{<topic>:<p>}:groups hash    read only: "~cut", where safe retention may
--                                              trim to (its consumers compute it)
-- ARGV[1]  producer id ('' = not idempotent)
-- ARGV[2]  batch sequence number of this producer on this partition (1, 2, ...)
-- ARGV[3]  max length (0 = none)            retention by count, approximate (MAXLEN ~)
-- ARGV[4]  retention ms (0 = none)          retention by age from server time (MINID ~)
-- ARGV[5]  safe retention (1/0): never trim entries some group has not delivered or acked
-- ARGV[6]  number of records n (at least 1)
-- ARGV[7..] per record either 0, key, value            (the common shape: fields key, value)
--           or f, then f field/value args            (key, value, h:<name> ...; f even, 2..4096)
-- Returns  {1, id1, ..., idn}  appended
--          {2, id1, ...}        duplicate of an already appended batch (ids of that batch;
--                               none if they cannot be told: a batch of an older version)
-- The ids of one batch are consecutive: the first is the server's ('*'), the others follow it
-- in the same millisecond (<ms>-<seq+1>, ...), so a retried batch's ids are known from its
-- first and last without reading the stream. Retention rides on the batch's XADDs (MAXLEN ~
-- and MINID ~); safe retention trims only to the "~cut" its consumers wrote. A producer needs
-- no read of the stream and no XTRIM.
-- Errors   BADBATCH when the arguments are malformed (nothing is written);
--          OUTOFSEQ when the sequence skips ahead (a batch in between was lost).
-- All or nothing: every argument is checked before the first write, and nothing after the
-- first write can fail: a wrong key type fails the HGET or the first XADD, and OOM is refused
-- only at a script's first write.
-- A redis.call error does not undo earlier writes, so an error reply from this script always
-- means that nothing of the batch was written.
local argv = ARGV
local function bad(msg)
  return redis.error_reply('BADBATCH ' .. msg .. ' (nothing written)')
end
-- A count as the server's own parsers take it (no sign, no leading zero), below 10^13.
local function count(s)
  return type(s) == 'string' and #s <= 13 and (s == '0' or string.match(s, '^[1-9]%d*$') ~= nil)
end
if not (count(argv[3]) and count(argv[4]) and count(argv[6])) then
  return bad('max length, retention ms and record count must be integers below 10^13')
end
local pid, seq = argv[1], tonumber(argv[2])
if pid ~= '' and not (count(argv[2]) and seq >= 1) then
  return bad('the batch sequence must be a positive integer')
end
local n = tonumber(argv[6])
if n < 1 then return bad('a batch has at least one record') end
-- Field counts: unpack() below pushes f values on Lua's C stack (about 8,000 slots).
local i = 7
for r = 1, n do
  local f = argv[i]
  if f == '0' then
    i = i + 3
  else
    local nf = tonumber(f)
    if not nf or nf < 2 or nf > 4096 or nf % 2 ~= 0 then
      return bad('record ' .. r .. ' has field count ' .. tostring(f) .. ' (want 0 or 2..4096, even)')
    end
    i = i + nf + 1
  end
end
if i ~= #argv + 1 then
  return bad(n .. ' records do not match the ' .. (#argv - 6) .. ' record arguments')
end

local stream, seqkey = KEYS[1], KEYS[2]
local now_ms = now_ms()  -- common.lua

if pid ~= '' then
  local prev = redis.call('HGET', seqkey, pid)
  if prev then
    local pseq, pfirst, plast = string.match(prev, '^(%d+) (%S+) (%S+)')
    pseq = tonumber(pseq)
    if seq <= pseq then
      local out = {2}
      if seq == pseq then
        local ms, first = string.match(pfirst, '^(%d+)-(%d+)$')
        local lms, last = string.match(plast, '^(%d+)-(%d+)$')
        first, last = tonumber(first), tonumber(last)
        if ms and ms == lms and last - first < 100000 then
          for k = first, last do out[#out + 1] = ms .. '-' .. string.format('%d', k) end
        end
      end
      return out
    elseif seq ~= pseq + 1 then
      return redis.error_reply('OUTOFSEQ producer ' .. pid .. ' sent batch ' .. seq ..
        ' after ' .. pseq .. ': a batch in between was lost')
    end
  elseif seq ~= 1 then
    return redis.error_reply('OUTOFSEQ producer ' .. pid .. ' is unknown here but sent batch ' .. seq)
  end
end

-- Retention, applied by the batch's own XADDs: MINID ~ on the first, MAXLEN ~ on the last
-- (a one-record batch with both takes turns by sequence). Safe retention: MINID ~ "~cut" only.
local maxlen, retention_ms, safe = tonumber(argv[3]), tonumber(argv[4]), argv[5] == '1'
if retention_ms >= now_ms then retention_ms = 0 end  -- a negative MINID is no id
local minid = retention_ms > 0 and (now_ms - retention_ms) .. '-0' or nil
if safe then
  local cut = redis.call('HGET', KEYS[3], '~cut')
  if cut or redis.call('EXISTS', KEYS[3]) == 1 then
    minid, maxlen = cut, 0  -- groups read this partition: only as far as they all got
  end
end
local first_trim, last_trim = {}, {}
if minid then first_trim = {'MINID', '~', minid} end
if maxlen > 0 then last_trim = {'MAXLEN', '~', argv[3]} end
if n == 1 and minid and maxlen > 0 then
  if (seq or now_ms) % 2 == 0 then first_trim = last_trim end
end

-- The first record gets the server's id; the others follow it in the same millisecond.
local call = redis.call
local ids = {1}
i = 7
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
ids[2] = xadd(n == 1 and (first_trim[1] and first_trim or last_trim) or first_trim, '*', i + 1, nf)
i = i + (nf == 0 and 3 or nf + 1)
local ms, s0 = string.match(ids[2], '^(%d+)-(%d+)$')
s0 = tonumber(s0)
-- Beyond 2^52 a Lua number no longer counts exactly: the server numbers the rest ('*').
local exact = s0 < 4503599627370496
-- The hot loop: locals instead of global/table lookups, a string test for the common form.
for r = 3, n + 1 do
  local id = exact and ms .. '-' .. string.format('%d', s0 + r - 2) or '*'
  f = argv[i]
  if r == n + 1 and last_trim[1] then
    nf = f == '0' and 0 or tonumber(f)
    ids[r] = xadd(last_trim, id, i + 1, nf)
    i = i + (nf == 0 and 3 or nf + 1)
  elseif f == '0' then
    ids[r] = call('XADD', stream, id, 'key', argv[i + 1], 'value', argv[i + 2])
    i = i + 3
  else
    f = tonumber(f)
    ids[r] = call('XADD', stream, id, unpack(argv, i + 1, i + f))
    i = i + f + 1
  end
end

if pid ~= '' then
  redis.call('HSET', seqkey, pid, seq .. ' ' .. ids[2] .. ' ' .. ids[n + 1] .. ' ' .. now_ms)
  -- Forget producers silent for a day, a few at a time, so the hash stays small.
  if redis.call('HLEN', seqkey) > 64 then
    local fields = redis.call('HRANDFIELD', seqkey, 8, 'WITHVALUES')
    for j = 1, #fields, 2 do
      local ms = tonumber(string.match(fields[j + 1], '(%d+)$'))
      if ms and now_ms - ms > 86400000 then
        redis.call('HDEL', seqkey, fields[j])
      end
    end
  end
end

return ids
