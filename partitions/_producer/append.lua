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
-- is_count, scan_records, batch_trims and append_records are common.lua's (shared with
-- transact.lua, which appends a pipeline's outputs the same way).
if not (is_count(argv[3]) and is_count(argv[4]) and is_count(argv[6])) then
  return bad('max length, retention ms and record count must be integers below 10^13')
end
local pid, seq = argv[1], tonumber(argv[2])
if pid ~= '' and not (is_count(argv[2]) and seq >= 1) then
  return bad('the batch sequence must be a positive integer')
end
local n = tonumber(argv[6])
if n < 1 then return bad('a batch has at least one record') end
local i, why = scan_records(argv, 7, n)
if i ~= #argv + 1 then
  return bad(why or (n .. ' records do not match the ' .. (#argv - 6) .. ' record arguments'))
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

local first_trim, last_trim = batch_trims(argv[3], tonumber(argv[4]), argv[5] == '1', KEYS[3],
  n, seq or now_ms, now_ms)
local ids = {1}
append_records(ids, stream, argv, 7, n, first_trim, last_trim)

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
