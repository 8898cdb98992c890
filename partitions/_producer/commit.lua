-- Commit the producer batches that native XADDs appended just before, in the same
-- MULTI/EXEC: check each one's sequence, record it, apply retention, or undo it. The
-- producer sends, for one or more batches of distinct partitions (one per slot on a cluster),
--   MULTI, XADD <stream> * <fields of record 1>, ..., XADD <stream> * <fields of record n>,
--   (the next batch's XADDs), FCALL commit ..., EXEC
-- so the records cost the server what native XADDs cost, and only one call a round runs Lua.
-- ARGV[1] is the producer id ('' = not idempotent), once per call (a round is one
-- producer's). Then per batch b (0, 1, ...): its keys from KEYS[k_b + 1] and its three
-- arguments ARGV[3b+2..3b+4]:
-- KEYS     {ns}:t:{<topic>:<p>}        stream  the partition
-- KEYS     {ns}:t:{<topic>:<p>}:seq    hash    producer id -> "seq first_id last_id ms"
-- KEYS     {ns}:t:{<topic>:<p>}:groups hash    only with safe retention, read only: "~cut",
--                                              where safe retention may trim to (its
--                                              consumers compute it)
-- ARGV     batch sequence number of this producer on this partition (1, 2, ...)
-- ARGV     number of records n the XADDs before this call appended (at least 1)
-- ARGV     the topic's retention "<max length> <retention ms> <safe>": max length (0 =
--          none), retention by count, approximate (MAXLEN ~); retention ms (0 = none), by age
--          from server time (MINID ~); safe (1/0): never trim entries some group has not
--          delivered or acked. A batch has the groups key exactly when it ends in " 1".
-- (Until session 7 of issue 18 each batch carried 3 keys and 6 arguments, the producer id
-- and the three settings repeated: the FCALL costs ~940 instructions a key and ~750 an
-- argument before any Lua runs, bench/README.md.)
-- Returns  one outcome per batch, in order:
--          1                 committed: the XADDs' own replies are the batch's ids
--          {2, id1, ...}     a duplicate of an already appended batch: this attempt's
--                            entries are deleted again; the ids are the first attempt's
--                            (none if they cannot be told: trimmed, or an older version)
--          an error          BADBATCH / OUTOFSEQ / any failure: this attempt's entries are
--                            deleted again, so nothing of the batch stays (all or nothing)
-- Each batch is committed or undone on its own, whatever the others' outcome.
-- Why the last n entries of a stream are its batch's: EXEC runs the transaction with nothing
-- between its commands, a round has one batch per partition, and the n XADDs all succeed or
-- all fail (same key, '*' ids, fields checked by
-- the client; a wrong key type fails every one of them, and then XREVRANGE fails here too).
-- The undo (XDEL) happens inside EXEC, so no reader ever sees the entries; it only moves the
-- stream's last id and entries-added counter, as a gap in the ids.
-- The ids of one batch are consecutive when the server froze its clock for the transaction
-- (Valkey and Redis >= 7.2 do): the first is then known from the last without a read. When
-- not (Redis 7.0: the batch may straddle a millisecond) the record says "~n" for the first,
-- and a duplicate's ids are read back from the stream (a duplicate is rare).
-- If this library is missing, FCALL fails inside EXEC after the XADDs ran: the batch is
-- appended but not recorded. The producer takes that as appended, loads the library and
-- changes its producer id (partitions/_producer/sender.py), and it sends through the MULTI
-- path only to a node where a call of this library succeeded on the same connection epoch.
local call, pcall_ = redis.call, redis.pcall
local match, find, sub, format = string.match, string.find, string.sub, string.format

-- is_count (common.lua) of each distinct argument once per call: a round's batches mostly
-- share their topic's settings, and a string.match per argument and batch was a tenth of
-- this function's cost on Redis 7.0 (callgrind, bench/README.md).
local counted = {}
local function count_arg(s)
  local ok = counted[s]
  if ok == nil then
    ok = is_count(s)  -- common.lua
    counted[s] = ok
  end
  return ok
end

-- A retention argument "<max length> <retention ms> <safe>" as (max length, retention ms,
-- safe), each distinct one parsed once per call; nil if malformed.
local settings = {}
local function parse_settings(s)
  local got = settings[s]
  if got == nil then
    local maxlen_s, retention_s, safe = match(s, '^(%d+) (%d+) ([01])$')
    got = false
    if maxlen_s and count_arg(maxlen_s) and count_arg(retention_s) then
      got = {maxlen_s, tonumber(retention_s), safe == '1'}
    end
    settings[s] = got
  end
  return got or nil
end

-- Delete the last n entries of ``stream`` (this attempt's) and return ``reply``. Never fails:
-- a stream that cannot be read (a wrong key type) had none of them appended.
local function undo(stream, n, reply)
  local got = n and n >= 1 and pcall_('XREVRANGE', stream, '+', '-', 'COUNT', n)
  if type(got) == 'table' and not got.err and #got > 0 then
    local ids = {}
    for i = 1, #got do ids[i] = got[i][1] end
    pcall_('XDEL', stream, unpack(ids))
  end
  return reply
end

local function bad(msg)
  return redis.error_reply('BADBATCH ' .. msg .. ' (nothing written)')
end

-- The ids of a batch recorded as "seq first last ms" (first may be "~<count>"), as a
-- duplicate's reply {2, id1, ...}.
local function recorded_ids(stream, pfirst, plast)
  local out = {2}
  local lms, last = match(plast, '^(%d+)-(%d+)$')
  local ms, first = match(pfirst, '^(%d+)-(%d+)$')
  if ms and ms == lms and tonumber(last) - tonumber(first) < 100000 then
    for k = tonumber(first), tonumber(last) do out[#out + 1] = ms .. '-' .. format('%d', k) end
    return out
  end
  local count = tonumber(match(pfirst, '^~(%d+)$'))
  if lms and count and count <= 100000 then
    local got = call('XREVRANGE', stream, plast, '-', 'COUNT', count)
    if #got > 0 and got[1][1] == plast then
      for i = #got, 1, -1 do out[#out + 1] = got[i][1] end
    end
  end
  return out
end

-- Commit one batch (its keys start after KEYS[k0], its arguments after ARGV[a0]): 1, the
-- duplicate's {2, ...}, or an error reply after undoing it. Raises only on a failure nothing
-- here expects (the caller undoes the batch then).
local function commit(pid, k0, a0)
  local stream, seqkey = KEYS[k0 + 1], KEYS[k0 + 2]
  local seq_s, n_s = ARGV[a0 + 1], ARGV[a0 + 2]
  local n = tonumber(n_s)
  local set = parse_settings(ARGV[a0 + 3])
  if not (set and count_arg(n_s)) then
    return undo(stream, n, bad('the retention must be "<max length> <retention ms> <0|1>" ' ..
      'and the record count an integer, integers below 10^13'))
  end
  local maxlen_s, retention_ms, safe = set[1], set[2], set[3]
  local seq = tonumber(seq_s)
  if pid ~= '' and not (count_arg(seq_s) and seq >= 1) then
    return undo(stream, n, bad('the batch sequence must be a positive integer'))
  end
  if n < 1 then return bad('a batch has at least one record') end

  if pid ~= '' then
    local prev = call('HGET', seqkey, pid)
    if prev then
      -- "seq first last ms": the sequence is all the common case needs (find, not match)
      local sp = find(prev, ' ', 1, true)
      local pseq = sp and tonumber(sub(prev, 1, sp - 1))
      if not pseq then error('the sequence record of producer ' .. pid .. ' is unreadable') end
      if seq <= pseq then
        -- the first attempt's ids, read before this attempt's entries go (they come after)
        local _, pfirst, plast = match(prev, '^(%d+) (%S+) (%S+)')
        return undo(stream, n, seq == pseq and pfirst and recorded_ids(stream, pfirst, plast)
          or {2})
      elseif seq ~= pseq + 1 then
        return undo(stream, n, redis.error_reply('OUTOFSEQ producer ' .. pid .. ' sent batch ' ..
          seq_s .. ' after ' .. pseq .. ': a batch in between was lost'))
      end
    elseif seq ~= 1 then
      return undo(stream, n, redis.error_reply('OUTOFSEQ producer ' .. pid ..
        ' is unknown here but sent batch ' .. seq_s))
    end
  end

  local top = call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if not top then
    return bad('the batch is not in the stream')
  end
  local last = top[1]
  local dash = find(last, '-', 1, true)
  local lms, lseq = sub(last, 1, dash - 1), tonumber(sub(last, dash + 1))

  -- Retention, now that the batch is in: MINID ~ (age, or the groups' cut), then MAXLEN ~.
  if maxlen_s ~= '0' or retention_ms > 0 or safe then
    local now = retention_ms > 0 and now_ms() or 0  -- common.lua
    -- common.lua: the MINID and the MAXLEN trims of a batch of several records
    local first_trim, last_trim = batch_trims(maxlen_s, retention_ms, safe,
      safe and KEYS[k0 + 3], 2, 1, now)
    if first_trim[1] then call('XTRIM', stream, unpack(first_trim)) end
    if last_trim[1] then call('XTRIM', stream, unpack(last_trim)) end
  end

  if pid ~= '' then
    -- '*' ids that never left one millisecond are consecutive: lseq >= n - 1 says so (a new
    -- millisecond restarts the sequence at 0, and nothing came between the batch's XADDs).
    -- Below 10^14 Lua writes a whole number as its digits ("%.14g").
    local first = lseq < 1e14 and lseq >= n - 1 and lms .. '-' .. (lseq - n + 1) or '~' .. n_s
    call('HSET', seqkey, pid, seq_s .. ' ' .. first .. ' ' .. last .. ' ' .. lms)
    -- Forget producers silent for a day, a few at a time, so the hash stays small.
    if seq % 16 == 1 and call('HLEN', seqkey) > 64 then
      local fields = call('HRANDFIELD', seqkey, 8, 'WITHVALUES')
      local now = tonumber(lms)
      for j = 1, #fields, 2 do
        local ms = tonumber(match(fields[j + 1], '(%d+)$'))
        if ms and now - ms > 86400000 then call('HDEL', seqkey, fields[j]) end
      end
    end
  end
  return 1
end

-- Where each batch's keys start: after two, or three with safe retention (its argument
-- ends in " 1"); the call is refused whole, nothing committed, if they do not add up.
local nb = (#ARGV - 1) / 3
local starts, k = {}, 0
for b = 0, nb - 1 do
  starts[b + 1] = k
  local s = ARGV[3 * b + 4]
  k = k + (sub(s, -2) == ' 1' and 3 or 2)
end
if #ARGV < 4 or (#ARGV - 1) % 3 ~= 0 or k ~= #KEYS then
  return bad('commit takes a producer id, then 2 keys (3 with safe retention) and 3 ' ..
    'arguments per batch, not ' .. #KEYS .. ' keys and ' .. #ARGV .. ' arguments')
end
local pid, out = ARGV[1], {}
for b = 0, nb - 1 do
  local ok, got = pcall(commit, pid, starts[b + 1], 1 + 3 * b)
  if not ok then  -- a failure of a call above (a wrong key type): undo the batch, go on
    got = undo(KEYS[starts[b + 1] + 1], tonumber(ARGV[3 * b + 3]),
      redis.error_reply(type(got) == 'table' and got.err or tostring(got)))
  end
  out[b + 1] = got
end
return out
