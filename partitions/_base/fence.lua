--[[ fence.lua: who may read and ack one partition for one group (data-plane fencing).

KEYS:
  1 fence  hash  under the PARTITION's hash tag: {ns}:t:{<topic>:<p>}:fence
                 field <group> -> "<member_id> <token>"
ARGV:
  1 op: "claim" | "release"
  2 group, 3 member_id, 4 token (decimal string, from the group's grant counter)

claim:   set the field if the stored token is lower (or the field is absent, or it already
         holds exactly this value). Returns 1, or 0 when a newer grant already holds it.
release: delete the field only if it still holds exactly "<member_id> <token>". Returns 1/0.

Tokens are compared as numbers; they stay below 2^53, so Lua's doubles are exact.
]]

local op, group, member_id, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local mine = member_id .. ' ' .. token
local cur = redis.call('HGET', KEYS[1], group)

if op == 'claim' then
  if cur == mine then return 1 end
  if cur then
    local held = tonumber(string.match(cur, ' (%d+)$') or '0')
    if held >= tonumber(token) then return 0 end
  end
  redis.call('HSET', KEYS[1], group, mine)
  return 1
end

if op == 'release' then
  if cur == mine then
    redis.call('HDEL', KEYS[1], group)
    return 1
  end
  return 0
end

return redis.error_reply('ERR fence.lua: unknown op ' .. tostring(op))
