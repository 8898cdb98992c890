-- Append one producer batch to one partition, atomically, and apply retention.
-- KEYS[1]  {ns}:t:{<topic>:<p>}        stream  the partition
-- KEYS[2]  {ns}:t:{<topic>:<p>}:seq    hash    producer id -> "seq first_id last_id ms"
-- ARGV[1]  producer id ('' = not idempotent)
-- ARGV[2]  batch sequence number of this producer on this partition (1, 2, ...)
-- ARGV[3]  max length (0 = none)            retention by count, approximate (MAXLEN ~)
-- ARGV[4]  retention ms (0 = none)          retention by age from server time (MINID ~)
-- ARGV[5]  safe retention (1/0): never trim entries some group has not delivered or acked
-- ARGV[6]  number of records n (at least 1)
-- ARGV[7..] per record either 0, key, value            (the common shape: fields key, value)
--           or f, then f field/value args            (key, value, h:<name> ...; f even, 2..4096)
-- Returns  {1, id1, ..., idn}  appended
--          {2, id1, ...}        duplicate of an already appended batch (ids of that batch)
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
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if pid ~= '' then
  local prev = redis.call('HGET', seqkey, pid)
  if prev then
    local pseq, pfirst, plast = string.match(prev, '^(%d+) (%S+) (%S+)')
    pseq = tonumber(pseq)
    if seq <= pseq then
      local out = {2}
      if seq == pseq then
        for _, e in ipairs(redis.call('XRANGE', stream, pfirst, plast)) do
          out[#out + 1] = e[1]
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

-- The hot loop: locals instead of global/table lookups, a string test for the common form.
local ids = {1}
local call = redis.call
i = 7
for r = 2, n + 1 do
  local f = argv[i]
  if f == '0' then
    ids[r] = call('XADD', stream, '*', 'key', argv[i + 1], 'value', argv[i + 2])
    i = i + 3
  else
    f = tonumber(f)
    ids[r] = call('XADD', stream, '*', unpack(argv, i + 1, i + f))
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

-- Retention. Without safe retention, plain approximate trims (whole radix-tree nodes, cheap).
-- Retention after age only if it reaches back past the epoch: a negative MINID is no id.
local maxlen, retention_ms, safe = tonumber(argv[3]), tonumber(argv[4]), argv[5] == '1'
if retention_ms >= now_ms then retention_ms = 0 end
if not safe then
  if maxlen > 0 then redis.call('XTRIM', stream, 'MAXLEN', '~', argv[3]) end
  if retention_ms > 0 then redis.call('XTRIM', stream, 'MINID', '~', (now_ms - retention_ms) .. '-0') end
  return ids
end

-- Safe retention: find the lowest id to keep ("cut") from age and length, then lower it to
-- the first entry any group has not delivered or acked, and trim below it.
local function id_lt(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end
local cut = nil
if retention_ms > 0 then
  cut = (now_ms - retention_ms) .. '-0'
end
if maxlen > 0 then
  local excess = redis.call('XLEN', stream) - maxlen
  -- Trim in steps of at least 100 entries, as MAXLEN ~ does with its nodes.
  if excess >= 100 then
    local page = redis.call('XRANGE', stream, '-', '+', 'COUNT', math.min(excess, 10000) + 1)
    local keep_from = page[#page][1]
    if cut == nil or id_lt(cut, keep_from) then cut = keep_from end
  end
end
if cut == nil then
  return ids
end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, last = nil, nil
  for k = 1, #g, 2 do
    if g[k] == 'name' then name = g[k + 1] elseif g[k] == 'last-delivered-id' then last = g[k + 1] end
  end
  -- Keep from the last delivered entry on (one more than needed): last + 1 would overflow
  -- Lua's numbers after a seek to a time ("<ms>-18446744073709551615").
  local need = last
  local pend = redis.call('XPENDING', stream, name)
  if pend[2] and id_lt(pend[2], need) then need = pend[2] end
  if id_lt(need, cut) then cut = need end
end
redis.call('XTRIM', stream, 'MINID', '~', cut)
return ids
