--[[ scrape.lua: what the metrics exporter reads, server-side and read-only (FCALL_RO), so a
scrape is one pipelined round per node. Flags: no-writes.

ARGV[1] = op:
  partition: KEYS 1 stream (the partition), 2 its dead-letter stream.
             ARGV 2 count limit (undelivered entries counted where the server's lag is NULL),
                  3 recount below: a positive server lag up to it is counted too where the
                    stream has had deletions (its counter may be stale: lag.py),
                  4 where to read the dead-letter stream from ("-" or "(<id>"),
                  5 how many dead letters to read at most, 6.. group names.
             -> {TIME, XINFO STREAM or nil (no stream yet), XINFO GROUPS,
                 per group {XPENDING summary or nil (the group never read it),
                            first id after its last-delivered id or nil (read where the
                            server's lag is not 0),
                            {count, exact} or nil (where the server's lag is NULL, or
                            small, positive and maybe stale)},
                 XRANGE of the dead letters, XLEN of the dead-letter stream}
             The replies are the servers' own (RESP2 shapes): the client parses them as it
             parses the same commands sent directly.
  group:     KEYS the seven group keys (as admin.lua) -> admin.lua's describe reply, or
             {"ERR", "UNKNOWN_GROUP", msg}.

Bounded work per partition: O(1) stream and group reads, one XPENDING summary and one
XRANGE COUNT 1 per group, the count only where the server cannot tell (at most the limit)
or may be stale (one page), and at most ARGV[5] dead letters.
]]

local op = ARGV[1]

if op == 'group' then
  local wrong = group_key_type_error(KEYS)  -- common.lua
  if wrong then return wrong end
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'ERR', 'UNKNOWN_GROUP', 'the group does not exist'}
  end
  return describe_group(KEYS)  -- common.lua
end

if op ~= 'partition' then return redis.error_reply('ERR unknown scrape op ' .. tostring(op)) end

local stream, dlq = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[2])
local clock = redis.call('TIME')
local recount = tonumber(ARGV[3])
local info, groups, deleted = false, {}, false
if redis.call('EXISTS', stream) == 1 then
  info = redis.call('XINFO', 'STREAM', stream)
  groups = redis.call('XINFO', 'GROUPS', stream)
  for i = 1, #info, 2 do
    if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] ~= '0-0' end
  end
end
local by_name = {}
for _, row in ipairs(groups) do
  local g = {}
  for i = 1, #row, 2 do g[row[i]] = row[i + 1] end
  by_name[g['name']] = g
end
local per = {}
for i = 6, #ARGV do
  local g = by_name[ARGV[i]]
  local pending, head, counted = false, false, false
  if g then
    local last, lag = g['last-delivered-id'], g['lag']
    pending = redis.call('XPENDING', stream, ARGV[i])
    if lag ~= 0 then  -- may have undelivered entries (lag is false when unknown)
      local next_ = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)[1]
      if next_ then head = next_[1] end
    end
    if not lag or (head and deleted and lag <= recount) then
      counted = count_after(stream, last, limit)  -- common.lua
    end
  end
  per[#per + 1] = {pending, head, counted}
end
return {clock, info, groups, per,
        redis.call('XRANGE', dlq, ARGV[4], '+', 'COUNT', tonumber(ARGV[5])),
        redis.call('XLEN', dlq)}
