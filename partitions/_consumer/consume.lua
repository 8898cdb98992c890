--[[ consume.lua: fenced reads, hand-outs, acks and dead letters of one partition for one group.

KEYS (all under the PARTITION's hash tag {<topic>:<p>}, so one slot in a cluster):
  1 stream  stream  the partition
  2 fence   hash    group -> "<member_id> <token>": the only grant allowed to read and ack
  3 groups  hash    group -> "<created_ms> <start>": set when the group first touched the
                    partition; a marked group missing from the stream means state was lost.
                    "<group>:reclaim" -> min idle ms: an admin's "reclaim stuck entries now"
                    request, served (then cleared) by the owner's next read.
                    "~cut" -> the id safe retention may trim below (every group of the
                    partition has delivered and acked what lies below it), written here by
                    the reclaim-time reads of a safe-retention topic, read by append
  4 dlq     stream  dead letters of the partition

ARGV (common): 1 op, 2 group, 3 fence value "<member_id> <token>", 4 topic, 5 partition,
               6 consumer name (the stream-level consumer all owners of a partition share)
  read   7 count (0 = only ack), 8 cursor: '' = new entries only; else first recover the
         group's pending entries after this id ('-' = all), in id order (takeover recovery),
         9 max_deliveries, 10 reclaim idle ms (0 = no reclaim this call), 11 start id if the
         group is created here ('0' | '$'), 12 safe retention "<max length> <retention ms>"
         ('' = the topic has none; with a reclaim, "~cut" is computed anew), 13 n acks,
         14.. ids to ack first (piggy-backed), then n undos and pairs id, deliveries: the
         hand-outs a lost 'hand' call recorded (it set deliveries + 1) taken back first
  reclaim  7 count, 8 max_deliveries, 9 reclaim idle ms, 10 safe retention (as read's 12):
         a periodic reclaim pass on its own, for a caller that reads new entries natively
         (the single-node fast path): the pending entries idle that long, nothing new
  hand   7 n acks, 8.. ids to ack, then pairs id, deliveries: record that these recovered
         entries are handed out now (XCLAIM ... RETRYCOUNT deliveries + 1)
  ack    7.. ids to ack
  retry  7 max_deliveries, 8.. pairs id, deliveries (the hand-out being retried included):
         keep each for another hand-out, or dead-letter it once deliveries >= max_deliveries
  dead   7 reason, 8.. triples id, deliveries, error: dead-letter with a user reason and
         an error text ('' = none; bounded by the caller)

Delivery counts. A delivery is a hand-out to the application, never a fetch into a buffer.
The PEL's delivery counter of an entry holds 1 + the hand-outs recorded on the server: the
'>' read that first fetches an entry sets it to 1 and counts nothing (the fetch may never be
handed out: prefetch, close, crash), and its first hand-out goes unrecorded on the hot path.
An entry recovered from the PEL (takeover, reclaim, retry) is returned with its recorded
count and is recorded by 'hand' (one call, acks riding along) right before the consumer hands
it out: a record that crashes its consumer every time is counted each time and reaches the
dead-letter stream after at most max_deliveries + 1 hand-outs, alone; what sat in a buffer
was never counted, nor is a 'hand' whose reply the consumer lost (it handed nothing out: its
next 'read' takes the recording back).

A pending entry whose payload is gone (trimmed before it was acked) is always dead-lettered
with reason "trimmed". Dead-lettering = XADD to the dlq with the origin, group, deliveries,
reason, then dlq.error (only when there is an error text), dlq.omitted (only when fields were
left out), then the original fields, and XACK: both in this one atomic call. The first twelve
values of a dead letter are always its dlq.* metadata (original fields cannot override it).

Every loop is bounded by the call's own arguments (count <= 10000 by ConsumerConfig, acks
chunked by 1000): no Lua stack or reply limit is reachable.

Replies (status first):
   0, "<holder>"            not owner: the fence holds another grant or was released by
                            a later owner ("nobody"); nothing was read or acked
  -1, "<what vanished>"     state lost: fence, stream or group gone under a live owner
   1, acked, entries, cursor, tail, dead, reclaimed, counts    (read)
        entries  {{id, {field, value, ...}}, ...} recovered/reclaimed first, then new
        cursor   next recovery cursor, '' once recovery is done
        tail     when no new entry was read: the last entry id ('0-0' if empty), else '';
                 '0' when this call ended a recovery (new entries were not read)
        dead     number of entries dead-lettered by this call
        reclaimed  entries the reclaim pass (periodic or requested) delivered again
        counts   recorded deliveries of the leading recovered entries (one each, in order);
                 the entries after them are new
   1, 0, entries, '', '', dead, reclaimed, counts    (reclaim: every entry recovered)
   1, acked, gone           (hand) gone: ids no longer pending (trimmed: dead-lettered)
   1, acked                 (ack)
   1, kept, dead            (retry, dead) kept: ids left pending for another hand-out
]]

local stream, fence, groups, dlq = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, group, mine, topic, partition, consumer =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

-- An empty fence after the group touched the partition: a later owner released it. Without
-- the mark too, the partition's keys were wiped under us.
local holder = redis.call('HGET', fence, group)
if holder ~= mine then
  if holder then return {0, holder} end
  if redis.call('HEXISTS', groups, group) == 1 then return {0, 'nobody'} end
  return {-1, 'fence'}
end

local function ack_range(first, last)
  local acked = 0
  for i = first, last, 1000 do
    acked = acked + redis.call('XACK', stream, group, unpack(ARGV, i, math.min(i + 999, last)))
  end
  return acked
end

-- Original fields copied into one dead letter at most: one XADD takes them all as arguments,
-- and Lua's stack holds about 8,000 (partstream's own entries have at most 2 + 2 + 2 x 1,000
-- header fields). An entry of another client with more keeps its first ones and says so.
local MAX_COPIED = 7000

local dead = 0
local function dead_letter(id, deliveries, reason, e, err)
  if e == nil then e = redis.call('XRANGE', stream, id, id)[1] end
  if not e then reason = 'trimmed' end
  local f = {'dlq.topic', topic, 'dlq.partition', partition, 'dlq.id', id, 'dlq.group', group,
             'dlq.deliveries', tostring(deliveries), 'dlq.reason', reason}
  if err and err ~= '' then
    f[#f + 1] = 'dlq.error'
    f[#f + 1] = err
  end
  if e then
    local src = e[2]
    local n = #src
    if n > MAX_COPIED then
      f[#f + 1] = 'dlq.omitted'
      f[#f + 1] = tostring(n - MAX_COPIED)
      n = MAX_COPIED
    end
    for i = 1, n do f[#f + 1] = src[i] end
  end
  redis.call('XADD', dlq, '*', unpack(f))
  redis.call('XACK', stream, group, id)
  dead = dead + 1
end

-- Recover the pending entries of an extended XPENDING reply ({id, consumer, idle, count}
-- each), in id order, without counting a delivery: their payloads (and recorded counts) are
-- appended to out/counts; spent or trimmed ones are dead-lettered.
local function recover(pend, max_deliveries, out, counts)
  for _, p in ipairs(pend) do
    local recorded = math.max(tonumber(p[4]) - 1, 0)
    local e = redis.call('XRANGE', stream, p[1], p[1])[1]
    if not e then
      dead_letter(p[1], recorded, 'trimmed', false)
    elseif recorded >= max_deliveries then
      dead_letter(p[1], recorded, 'max_deliveries', e)
    else
      out[#out + 1] = e
      counts[#counts + 1] = recorded
    end
  end
end

-- Hand-outs recorded by a 'hand' call whose reply the consumer never got (cancelled, the
-- connection lost): it handed nothing out, so each recording is taken back before the
-- recovery of this read judges the entry by its count, or a record cut off often enough
-- would be dead-lettered as poison unseen. Only an entry still pending at exactly the count
-- that call left (deliveries + 1), its payload there (XCLAIM drops one whose payload is
-- gone, which recovery dead-letters as trimmed instead): a call that never ran is left be.
local function unhand(first, n)
  for i = first, first + 2 * n - 1, 2 do
    local id, d = ARGV[i], tonumber(ARGV[i + 1])
    local p = redis.pcall('XPENDING', stream, group, id, id, 1)
    if type(p) ~= 'table' or p.err then return end  -- no group: the read below tells
    if p[1] and tonumber(p[1][4]) == d + 1 and redis.call('XRANGE', stream, id, id)[1] then
      redis.call('XCLAIM', stream, group, consumer, 0, id, 'RETRYCOUNT', d, 'JUSTID')
    end
  end
end

local function lost()
  if redis.call('EXISTS', stream) == 0 then return {-1, 'stream'} end
  return {-1, 'group'}
end

local function ensure_group(start)
  if redis.call('HEXISTS', groups, group) == 1 then return false end
  redis.call('XGROUP', 'CREATE', stream, group, start, 'MKSTREAM')
  -- An empty dead-letter stream: while a cluster slot migrates, a script whose declared keys
  -- partly do not exist gets TRYAGAIN until the move ends; with every key present it is
  -- served by one side or the other (ASK) during all but the key-moving steps.
  if redis.call('EXISTS', dlq) == 0 then redis.call('XADD', dlq, 'MAXLEN', '0', '*', 'x', '') end
  -- A new group may need what safe retention was about to trim: the cut is computed anew.
  redis.call('HDEL', groups, '~cut')
  local t = redis.call('TIME')
  redis.call('HSET', groups, group, t[1] .. string.format('%03d', math.floor(t[2] / 1000)) ..
    ' ' .. start)
  return true
end

local function id_lt(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end

-- Safe retention's "~cut": the lowest id to keep by age and length, lowered to the first
-- entry any group of the stream (partstream's or another client's) has not delivered or
-- acked. Bounded: one XRANGE page of at most 10,001 entries, one XPENDING per group.
local function update_cut(spec)
  local maxlen, retention_ms = string.match(spec, '^(%d+) (%d+)$')
  maxlen, retention_ms = tonumber(maxlen), tonumber(retention_ms)
  local now = now_ms()
  local cut = nil
  if retention_ms > 0 and retention_ms < now then cut = (now - retention_ms) .. '-0' end
  if maxlen > 0 then
    local excess = redis.call('XLEN', stream) - maxlen
    -- Trim in steps of at least 100 entries, as MAXLEN ~ does with its nodes.
    if excess >= 100 then
      local page = redis.call('XRANGE', stream, '-', '+', 'COUNT', math.min(excess, 10000) + 1)
      local keep_from = page[#page][1]
      if cut == nil or id_lt(cut, keep_from) then cut = keep_from end
    end
  end
  if cut == nil then return end
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
  redis.call('HSET', groups, '~cut', cut)
end

if op == 'read' then
  local count, cursor = tonumber(ARGV[7]), ARGV[8]
  local max_deliveries, reclaim_ms = tonumber(ARGV[9]), tonumber(ARGV[10])
  local start_id, nacks = ARGV[11], tonumber(ARGV[13])
  local acked = 0
  if nacks > 0 then acked = ack_range(14, 13 + nacks) end
  local nundo = tonumber(ARGV[14 + nacks])
  if nundo > 0 then unhand(15 + nacks, nundo) end
  if cursor == '' and reclaim_ms > 0 and ARGV[12] ~= '' then update_cut(ARGV[12]) end
  if count == 0 then return {1, acked, {}, cursor, '', 0, 0, {}} end

  -- "Reclaim stuck entries now" (offsets.reclaim_now): served once recovery is done.
  local asked = cursor == '' and redis.call('HGET', groups, group .. ':reclaim')
  if asked then
    redis.call('HDEL', groups, group .. ':reclaim')
    reclaim_ms = tonumber(asked) or 0
  end
  local reclaimed = 0

  -- A missing group (or stream) shows as a NOGROUP error: only the first read pays for it.
  local out, counts = {}, {}
  if cursor ~= '' then
    local from = cursor == '-' and '-' or '(' .. cursor
    local pend = redis.pcall('XPENDING', stream, group, from, '+', count)
    if type(pend) == 'table' and pend.err then
      if not ensure_group(start_id) then return lost() end
      pend = {}
    end
    recover(pend, max_deliveries, out, counts)
    if #pend == count then
      return {1, acked, out, pend[#pend][1], '', dead, 0, counts}
    end
    -- Recovery is done. New entries are left to the caller's next read, a native
    -- XREADGROUP on its fast path: through here each entry costs the server a conversion
    -- to Lua and back (about 3 us on Redis 7.0), and the first read of a backlog is one.
    -- Tail '0': nothing new was read, and a wait from '0' returns at once if the stream
    -- holds anything.
    return {1, acked, out, '', '0', dead, 0, counts}
  elseif reclaim_ms > 0 or asked then
    local pend = redis.pcall('XPENDING', stream, group, 'IDLE', reclaim_ms, '-', '+', count)
    if type(pend) == 'table' and not pend.err then
      recover(pend, max_deliveries, out, counts)
      reclaimed = #out
      -- More stuck entries than one read takes: the request stands for the next read.
      if asked and #pend == count then redis.call('HSET', groups, group .. ':reclaim', asked) end
    end
  end
  local want = count - #out
  if want > 0 then
    local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
                          'STREAMS', stream, '>')
    if type(r) == 'table' and r.err then
      if not ensure_group(start_id) then return lost() end
      r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
                     'STREAMS', stream, '>')
    end
    if r then
      for _, e in ipairs(r[1][2]) do out[#out + 1] = e end
      return {1, acked, out, cursor, '', dead, reclaimed, counts}
    end
  end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  return {1, acked, out, cursor, last and last[1] or '0-0', dead, reclaimed, counts}
end

-- A reclaim pass without the read that would follow it in 'read': the entries are recovered
-- as there; the caller's native XREADGROUP reads the new ones (through here each would cost a
-- conversion to Lua and back). A missing group is left to that read to find.
if op == 'reclaim' then
  local count, max_deliveries, reclaim_ms = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  if ARGV[10] ~= '' then update_cut(ARGV[10]) end
  local out, counts = {}, {}
  local pend = redis.pcall('XPENDING', stream, group, 'IDLE', reclaim_ms, '-', '+', count)
  if type(pend) == 'table' and not pend.err then recover(pend, max_deliveries, out, counts) end
  return {1, 0, out, '', '', dead, #out, counts}
end

if op == 'hand' then
  local nacks = tonumber(ARGV[7])
  local acked = 0
  if nacks > 0 then acked = ack_range(8, 7 + nacks) end
  local gone = {}
  for i = 8 + nacks, #ARGV, 2 do
    local id = ARGV[i]
    local got = redis.call('XCLAIM', stream, group, consumer, 0, id,
                           'RETRYCOUNT', tonumber(ARGV[i + 1]) + 1, 'JUSTID')
    if #got == 0 then
      -- XCLAIM drops a pending entry whose payload is gone; an acked one is simply gone.
      gone[#gone + 1] = id
      if redis.call('XRANGE', stream, id, id)[1] == nil then
        dead_letter(id, tonumber(ARGV[i + 1]) - 1, 'trimmed', false)
      end
    end
  end
  return {1, acked, gone}
end

if op == 'ack' then
  if #ARGV < 7 then return {1, 0} end
  return {1, ack_range(7, #ARGV)}
end

-- The pairs of 'retry' (triples of 'dead': the error too) that are still pending (an acked
-- or foreign id is skipped).
local function pending_pairs(first, step)
  local out = {}
  for i = first, #ARGV, step do
    if redis.call('XPENDING', stream, group, ARGV[i], ARGV[i], 1)[1] then
      out[#out + 1] = {ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]}
    end
  end
  return out
end

if op == 'retry' then
  local max_deliveries, kept = tonumber(ARGV[7]), {}
  for _, p in ipairs(pending_pairs(8, 2)) do
    if p[2] >= max_deliveries then
      dead_letter(p[1], p[2], 'max_deliveries')
    else
      local got = redis.call('XCLAIM', stream, group, consumer, 0, p[1],
                             'RETRYCOUNT', p[2] + 1, 'JUSTID')
      if #got == 0 then dead_letter(p[1], p[2], 'trimmed', false) else kept[#kept + 1] = p[1] end
    end
  end
  return {1, kept, dead}
end

if op == 'dead' then
  for _, p in ipairs(pending_pairs(8, 3)) do dead_letter(p[1], p[2], ARGV[7], nil, p[3]) end
  return {1, {}, dead}
end

return redis.error_reply('ERR consume.lua: unknown op ' .. tostring(op))
