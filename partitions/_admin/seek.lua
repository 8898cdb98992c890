--[[ seek.lua: move one group's position on one partition; its pending entries are forgotten.

After a seek the group reads the partition from just after the new id, each entry once:
entries pending before the seek are acked (they are either skipped or re-read as new).

KEYS (all under the PARTITION's hash tag {<topic>:<p>}):
  1 stream  stream  the partition
  2 fence   hash    group -> "<member_id> <token>"
  3 groups  hash    group -> "<created_ms> <start>" (see consume.lua)
ARGV:
  1 group
  2 fence value "<member_id> <token>" of the seeking owner, or '' for an admin seek (the
    caller checked that the group has no live member)
  3 new last-delivered id: '0' (earliest), '$' (latest) or an explicit id
  4 '1' = create the group here if it is missing (admin: the explicit decision after a state
    loss, or before the first member), '0' = a missing group is an error

Replies:
   1, previous last-delivered id ('' if the group was created), pending entries cleared
   0, "<holder>"   not owner (fenced seek whose grant was superseded)
  -1, "<what>"     fence or group missing
]]

local stream, fence, groups = KEYS[1], KEYS[2], KEYS[3]
local group, mine, id, create = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'

if mine ~= '' then
  local holder = redis.call('HGET', fence, group)
  if holder ~= mine then
    if holder or redis.call('HEXISTS', groups, group) == 1 then return {0, holder or 'nobody'} end
    return {-1, 'fence'}
  end
end

local previous = nil
local info = redis.pcall('XINFO', 'GROUPS', stream)
if not info.err then
  for _, g in ipairs(info) do
    local name, last = nil, nil
    for k = 1, #g, 2 do
      if g[k] == 'name' then name = g[k + 1] elseif g[k] == 'last-delivered-id' then last = g[k + 1] end
    end
    if name == group then previous = last end
  end
end

if not previous then
  if not create then return {-1, 'group'} end
  redis.call('XGROUP', 'CREATE', stream, group, id, 'MKSTREAM')
  redis.call('HDEL', groups, '~cut')
  local t = redis.call('TIME')
  redis.call('HSET', groups, group, t[1] .. string.format('%03d', math.floor(t[2] / 1000)) ..
    ' ' .. id)
  return {1, '', 0}
end

-- The group may now want entries safe retention was about to trim: the cut is computed anew.
redis.call('HDEL', groups, '~cut')
local cleared = 0
while true do
  local pend = redis.call('XPENDING', stream, group, '-', '+', 1000)
  if #pend == 0 then break end
  local ids = {}
  for i, p in ipairs(pend) do ids[i] = p[1] end
  cleared = cleared + redis.call('XACK', stream, group, unpack(ids))
end
redis.call('XGROUP', 'SETID', stream, group, id)
return {1, previous, cleared}
