-- Commit the producer batches that native XADDs appended just before, in the same
-- MULTI/EXEC: check each one's sequence, record it, apply retention, or undo it. The
-- producer sends, for one or more batches of distinct partitions (one per slot on a cluster),
--   MULTI, XADD <stream> * <fields of record 1>, ..., XADD <stream> * <fields of record n>,
--   (the next batch's XADDs), FCALL commit ..., EXEC
-- so the records cost the server what native XADDs cost, and only one call a round runs Lua.
-- Per batch b (0, 1, ...): KEYS[3b+1..3b+3] and ARGV[6b+1..6b+6] as follows.
-- KEYS[1]  {ns}:t:{<topic>:<p>}        stream  the partition
-- KEYS[2]  {ns}:t:{<topic>:<p>}:seq    hash    producer id -> "seq first_id last_id ms"
-- KEYS[3]  {ns}:t:{<topic>:<p>}:groups hash    read only: "~cut", where safe retention may
--                                              trim to (its consumers compute it)
-- ARGV[1]  producer id ('' = not idempotent)
-- ARGV[2]  batch sequence number of this producer on this partition (1, 2, ...)
-- ARGV[3]  max length (0 = none)            retention by count, approximate (MAXLEN ~)
-- ARGV[4]  retention ms (0 = none)          retention by age from server time (MINID ~)
-- ARGV[5]  safe retention (1/0): never trim entries some group has not delivered or acked
-- ARGV[6]  number of records n the XADDs before this call appended (at least 1)
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

-- Commit (or undo) one batch: its three keys and six arguments.
local function commit(keys, argv)
  local stream, seqkey = keys[1], keys[2]
  local n = tonumber(argv[6])

  -- Delete this attempt's n entries (the last n of the stream) and return ``reply``.
  local function undo(reply)
    if n and n >= 1 then
      local got = pcall_('XREVRANGE', stream, '+', '-', 'COUNT', n)
      if type(got) == 'table' and not got.err and #got > 0 then
        local ids = {}
        for i = 1, #got do ids[i] = got[i][1] end
        call('XDEL', stream, unpack(ids))
      end
    end
    return reply
  end

  local function bad(msg)
    return undo(redis.error_reply('BADBATCH ' .. msg .. ' (nothing written)'))
  end
  if not (is_count(argv[3]) and is_count(argv[4]) and is_count(argv[6])) then
    return bad('max length, retention ms and record count must be integers below 10^13')
  end
  local pid, seq = argv[1], tonumber(argv[2])
  if pid ~= '' and not (is_count(argv[2]) and seq >= 1) then
    return bad('the batch sequence must be a positive integer')
  end
  if n < 1 then return bad('a batch has at least one record') end

  -- The ids of the batch recorded as "seq first last ms" (first may be "~<count>").
  local function recorded_ids(pfirst, plast)
    local out = {2}
    local lms, last = string.match(plast, '^(%d+)-(%d+)$')
    local ms, first = string.match(pfirst, '^(%d+)-(%d+)$')
    if ms and ms == lms and tonumber(last) - tonumber(first) < 100000 then
      for k = tonumber(first), tonumber(last) do
        out[#out + 1] = ms .. '-' .. string.format('%d', k)
      end
      return out
    end
    local count = tonumber(string.match(pfirst, '^~(%d+)$'))
    if lms and count and count <= 100000 then
      local got = call('XREVRANGE', stream, plast, '-', 'COUNT', count)
      if #got > 0 and got[1][1] == plast then
        for i = #got, 1, -1 do out[#out + 1] = got[i][1] end
      end
    end
    return out
  end

  if pid ~= '' then
    local prev = pcall_('HGET', seqkey, pid)
    if type(prev) == 'table' and prev.err then return undo(prev) end
    if prev then
      local pseq, pfirst, plast = string.match(prev, '^(%d+) (%S+) (%S+)')
      pseq = tonumber(pseq)
      if seq <= pseq then
        -- read the first attempt's ids before this attempt's entries go (they come after)
        local out = seq == pseq and recorded_ids(pfirst, plast) or {2}
        return undo(out)
      elseif seq ~= pseq + 1 then
        return undo(redis.error_reply('OUTOFSEQ producer ' .. pid .. ' sent batch ' .. seq ..
          ' after ' .. pseq .. ': a batch in between was lost'))
      end
    elseif seq ~= 1 then
      return undo(redis.error_reply('OUTOFSEQ producer ' .. pid ..
        ' is unknown here but sent batch ' .. seq))
    end
  end

  local top = pcall_('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if type(top) ~= 'table' or top.err or not top[1] then
    return undo(type(top) == 'table' and top.err and top or
      redis.error_reply('BADBATCH the batch is not in the stream (nothing written)'))
  end
  local last = top[1][1]
  local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
  lseq = tonumber(lseq)

  -- Retention, now that the batch is in: MINID ~ (age or the groups' cut), then MAXLEN ~.
  -- A failure in here (the groups hash of a wrong type) undoes the batch like any other.
  local maxlen_s, retention_ms = argv[3], tonumber(argv[4])
  if maxlen_s ~= '0' or retention_ms > 0 or argv[5] == '1' then
    local ok, err = pcall(function()
      local now = retention_ms > 0 and now_ms() or 0  -- common.lua
      -- common.lua: the MINID and the MAXLEN trims of a batch of several records
      local first_trim, last_trim = batch_trims(maxlen_s, retention_ms, argv[5] == '1', keys[3],
        2, 1, now)
      if first_trim[1] then call('XTRIM', stream, unpack(first_trim)) end
      if last_trim[1] then call('XTRIM', stream, unpack(last_trim)) end
    end)
    if not ok then
      return undo(redis.error_reply(type(err) == 'table' and err.err or tostring(err)))
    end
  end

  if pid ~= '' then
    -- '*' ids that never left one millisecond are consecutive: lseq >= n - 1 says so (a new
    -- millisecond restarts the sequence at 0, and nothing came between the batch's XADDs).
    local first = lseq < 4503599627370496 and lseq >= n - 1 and
      lms .. '-' .. string.format('%d', lseq - n + 1) or '~' .. n
    call('HSET', seqkey, pid, seq .. ' ' .. first .. ' ' .. last .. ' ' .. lms)
    -- Forget producers silent for a day, a few at a time, so the hash stays small.
    if seq % 16 == 1 and call('HLEN', seqkey) > 64 then
      local fields = call('HRANDFIELD', seqkey, 8, 'WITHVALUES')
      local now = tonumber(lms)
      for j = 1, #fields, 2 do
        local ms = tonumber(string.match(fields[j + 1], '(%d+)$'))
        if ms and now - ms > 86400000 then call('HDEL', seqkey, fields[j]) end
      end
    end
  end
  return 1
end

if #KEYS == 0 or #KEYS % 3 ~= 0 or #ARGV ~= #KEYS * 2 then
  return redis.error_reply('BADBATCH commit takes 3 keys and 6 arguments per batch, not ' ..
    #KEYS .. ' and ' .. #ARGV .. ' (nothing written)')
end
local out = {}
for b = 0, #KEYS / 3 - 1 do
  local keys = {KEYS[3 * b + 1], KEYS[3 * b + 2], KEYS[3 * b + 3]}
  local argv = {}
  for i = 1, 6 do argv[i] = ARGV[6 * b + i] end
  local ok, got = pcall(commit, keys, argv)
  if not ok then  -- an error nothing above caught: undo this batch, go on with the next
    local n = tonumber(argv[6]) or 0
    local top = n > 0 and pcall_('XREVRANGE', keys[1], '+', '-', 'COUNT', n) or {}
    if type(top) == 'table' and not top.err and #top > 0 then
      local ids = {}
      for i = 1, #top do ids[i] = top[i][1] end
      call('XDEL', keys[1], unpack(ids))
    end
    got = redis.error_reply(type(got) == 'table' and got.err or tostring(got))
  end
  out[b + 1] = got
end
return out
