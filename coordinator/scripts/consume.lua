--[[ consume.lua: fenced reads, acks and dead letters of one partition for one group.

KEYS (all under the PARTITION's hash tag {<topic>:<p>}, so one slot in a cluster):
  1 stream  stream  the partition
  2 fence   hash    group -> "<member_id> <token>": the only grant allowed to read and ack
  3 groups  hash    group -> "<created_ms> <start>": set when the group first touched the
                    partition; a marked group missing from the stream means state was lost.
                    "<group>:reclaim" -> min idle ms: an admin's "reclaim stuck entries now"
                    request, served (then cleared) by the owner's next read
  4 dlq     stream  dead letters of the partition

ARGV (common): 1 op, 2 group, 3 fence value "<member_id> <token>", 4 topic, 5 partition,
               6 consumer name (the stream-level consumer all owners of a partition share)
  read   7 count (0 = only ack), 8 cursor: '' = new entries only; else first redeliver the
         group's pending entries after this id ('-' = all), in id order (takeover recovery),
         9 max_deliveries, 10 reclaim idle ms (0 = no reclaim this call), 11 start id if the
         group is created here ('0' | '$'), 12 n acks, 13.. ids to ack first (piggy-backed)
  ack    7.. ids to ack
  retry  7 max_deliveries, 8.. pending ids to deliver again (XCLAIM: delivery count + 1);
         an id already delivered max_deliveries times is dead-lettered instead
  dead   7 reason, 8.. pending ids to dead-letter with a user reason

A pending entry whose payload is gone (trimmed before it was acked) is always dead-lettered
with reason "trimmed". Dead-lettering = XADD to the dlq with the origin, group, delivery count,
reason and the original fields, then XACK: both in this one atomic call.

Replies (status first):
   0, "<holder>"            not owner: the fence holds another grant or was released by
                            a later owner ("nobody"); nothing was read or acked
  -1, "<what vanished>"     state lost: fence, stream or group gone under a live owner
   1, acked, entries, cursor, tail, dead, reclaimed    (read)
        entries  {{id, {field, value, ...}}, ...} recovered/reclaimed first, then new
        cursor   next recovery cursor, '' once recovery is done
        tail     when no new entry was read: the last entry id ('0-0' if empty), else ''
        dead     number of entries dead-lettered by this call
        reclaimed  entries the reclaim pass (periodic or requested) delivered again
   1, acked                 (ack)
   1, entries, dead         (retry, dead)
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

local dead = 0
local function dead_letter(id, count, reason)
  local e = redis.call('XRANGE', stream, id, id)[1]
  if not e then reason = 'trimmed' end
  local f = {'dlq.topic', topic, 'dlq.partition', partition, 'dlq.id', id, 'dlq.group', group,
             'dlq.deliveries', tostring(count), 'dlq.reason', reason}
  if e then
    for _, v in ipairs(e[2]) do f[#f + 1] = v end
  end
  redis.call('XADD', dlq, '*', unpack(f))
  redis.call('XACK', stream, group, id)
  dead = dead + 1
end

-- Deliver again the pending entries described by an extended XPENDING reply
-- ({id, consumer, idle, count} each), in id order; returns their entries.
local function redeliver(pend, max_deliveries, out)
  local claim = {}
  for _, p in ipairs(pend) do
    if tonumber(p[4]) >= max_deliveries then
      dead_letter(p[1], p[4], 'max_deliveries')
    else
      claim[#claim + 1] = p[1]
    end
  end
  if #claim == 0 then return out end
  -- XCLAIM (not XAUTOCLAIM): we need each entry's delivery count, which XPENDING gave us.
  -- Entries whose payload was trimmed are dropped from the PEL and not returned.
  local got = redis.call('XCLAIM', stream, group, consumer, 0, unpack(claim))
  local j = 1
  for _, id in ipairs(claim) do
    local e = got[j]
    if e and e[1] == id then
      out[#out + 1] = e
      j = j + 1
    else
      dead_letter(id, 0, 'trimmed')
    end
  end
  return out
end

local function pending_of(ids_from)
  local pend = {}
  for i = ids_from, #ARGV do
    local p = redis.call('XPENDING', stream, group, ARGV[i], ARGV[i], 1)[1]
    if p then pend[#pend + 1] = p end
  end
  return pend
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
  local t = redis.call('TIME')
  redis.call('HSET', groups, group, t[1] .. string.format('%03d', math.floor(t[2] / 1000)) ..
    ' ' .. start)
  return true
end

if op == 'read' then
  local count, cursor = tonumber(ARGV[7]), ARGV[8]
  local max_deliveries, reclaim_ms = tonumber(ARGV[9]), tonumber(ARGV[10])
  local nacks = tonumber(ARGV[12])
  local acked = 0
  if nacks > 0 then acked = ack_range(13, 12 + nacks) end
  if count == 0 then return {1, acked, {}, cursor, '', 0, 0} end

  -- "Reclaim stuck entries now" (offsets.reclaim_now): served once recovery is done.
  local asked = cursor == '' and redis.call('HGET', groups, group .. ':reclaim')
  if asked then
    redis.call('HDEL', groups, group .. ':reclaim')
    reclaim_ms = tonumber(asked) or 0
  end
  local reclaimed = 0

  -- A missing group (or stream) shows as a NOGROUP error: only the first read pays for it.
  local out = {}
  if cursor ~= '' then
    local start = cursor == '-' and '-' or '(' .. cursor
    local pend = redis.pcall('XPENDING', stream, group, start, '+', count)
    if type(pend) == 'table' and pend.err then
      if not ensure_group(ARGV[11]) then return lost() end
      pend = {}
    end
    redeliver(pend, max_deliveries, out)
    if #pend == count then
      return {1, acked, out, pend[#pend][1], '', dead, 0}
    end
    cursor = ''
  elseif reclaim_ms > 0 or asked then
    local pend = redis.pcall('XPENDING', stream, group, 'IDLE', reclaim_ms, '-', '+', count)
    if type(pend) == 'table' and not pend.err then
      redeliver(pend, max_deliveries, out)
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
      if not ensure_group(ARGV[11]) then return lost() end
      r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
                     'STREAMS', stream, '>')
    end
    if r then
      for _, e in ipairs(r[1][2]) do out[#out + 1] = e end
      return {1, acked, out, cursor, '', dead, reclaimed}
    end
  end
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  return {1, acked, out, cursor, last and last[1] or '0-0', dead, reclaimed}
end

if op == 'ack' then
  if #ARGV < 7 then return {1, 0} end
  return {1, ack_range(7, #ARGV)}
end

if op == 'retry' then
  local out = redeliver(pending_of(8), tonumber(ARGV[7]), {})
  return {1, out, dead}
end

if op == 'dead' then
  for _, p in ipairs(pending_of(8)) do dead_letter(p[1], p[4], ARGV[7]) end
  return {1, {}, dead}
end

return redis.error_reply('ERR consume.lua: unknown op ' .. tostring(op))
