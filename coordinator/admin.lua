--[[ admin.lua: create, alter, delete, describe a group; submit a computed target assignment.

KEYS: the same seven group keys as member.lua (cfg, state, members, hb, target, owners,
instances), all under the group's hash tag.

ARGV[1] = op, then per op:
  create:   2.. settings as name, value pairs          -> {"OK"} or {"EXISTS"}
  alter:    2.. settings as name, value pairs          -> {"OK", group_epoch} or
            {"ERR", "UNKNOWN_GROUP", msg}; a new assignor bumps the group epoch so the
            target is recomputed with it
  delete:   2 "1" = even with live members             -> {"OK", keys deleted} or
            {"ERR", "UNKNOWN_GROUP" | "NOT_EMPTY", msg}
  describe: (none) -> {"OK", now_ms, cfg {k, v...}, state {k, v...},
            members {member_id, record json, last heartbeat ms, target, ...},
            owners {"topic:p", "<member_id> <token> <epoch>", ...}}
            or {"ERR", "UNKNOWN_GROUP", msg}
  assign:   2 group epoch the target was computed at, 3.. member_id, "topic:p ..." pairs
            -> {"OK"} written | {"DONE"} target already at that epoch |
               {"STALE", epoch} the group changed since: recompute | {"ERR", "INVALID", msg}
            Compare-and-set on the group epoch: the first member to submit wins.
]]

local K_CFG, K_STATE, K_MEMBERS, K_HB, K_TARGET, K_OWNERS, K_INST =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local op = ARGV[1]

local function no_group()
  return {'ERR', 'UNKNOWN_GROUP', 'the group does not exist'}
end

local function settings_from(first)
  local fields = {}
  for i = first, #ARGV do fields[#fields + 1] = ARGV[i] end
  return fields
end

-- A key of the wrong type (written by someone else) must stop us before any write.
local wrong = group_key_type_error(KEYS)  -- common.lua
if wrong then return wrong end

if op == 'create' then
  if redis.call('EXISTS', K_CFG) == 1 then return {'EXISTS'} end
  local now = now_ms()
  redis.call('HSET', K_CFG, unpack(settings_from(2)))
  bootstrap_group_state(K_STATE, now)  -- common.lua
  return {'OK'}
end

if redis.call('EXISTS', K_CFG) == 0 then return no_group() end

if op == 'alter' then
  local before = redis.call('HGET', K_CFG, 'assignor')
  redis.call('HSET', K_CFG, unpack(settings_from(2)))
  if redis.call('HGET', K_CFG, 'assignor') ~= before then
    redis.call('HSET', K_STATE, 'epoch_ms', now_ms())
    redis.call('HINCRBY', K_STATE, 'epoch', 1)
  end
  return {'OK', tonumber(redis.call('HGET', K_STATE, 'epoch'))}
end

if op == 'delete' then
  if ARGV[2] ~= '1' then
    for _, raw in ipairs(redis.call('HVALS', K_MEMBERS)) do
      if cjson.decode(raw).l ~= 1 then
        return {'ERR', 'NOT_EMPTY', 'the group still has live members; stop them or force'}
      end
    end
  end
  return {'OK', redis.call('DEL', K_CFG, K_STATE, K_MEMBERS, K_HB, K_TARGET, K_OWNERS, K_INST)}
end

if op == 'describe' then return describe_group(KEYS) end  -- common.lua

if op == 'assign' then
  local epoch = tonumber(redis.call('HGET', K_STATE, 'epoch'))
  if tonumber(ARGV[2]) ~= epoch then return {'STALE', epoch} end
  if tonumber(redis.call('HGET', K_STATE, 'target_epoch')) == epoch then return {'DONE'} end
  local seen, pairs_ = {}, {}
  for i = 3, #ARGV, 2 do
    local id, tps = ARGV[i], ARGV[i + 1]
    if redis.call('HEXISTS', K_MEMBERS, id) == 0 then return {'STALE', epoch} end
    for tp in string.gmatch(tps, '%S+') do
      if seen[tp] then
        return {'ERR', 'INVALID', 'partition ' .. tp .. ' assigned to two members'}
      end
      seen[tp] = true
    end
    pairs_[#pairs_ + 1] = id
    pairs_[#pairs_ + 1] = tps
  end
  redis.call('DEL', K_TARGET)
  -- In chunks: one HSET of thousands of members would pass Lua's stack limit (~8,000).
  for i = 1, #pairs_, 1000 do
    redis.call('HSET', K_TARGET, unpack(pairs_, i, math.min(i + 999, #pairs_)))
  end
  redis.call('HSET', K_STATE, 'target_epoch', epoch)
  return {'OK'}
end

return redis.error_reply('ERR admin.lua: unknown op ' .. tostring(op))
