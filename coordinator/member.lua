--[[ member.lua: a member joins, heartbeats or leaves a consumer group. One atomic call.

KEYS (all under the group's hash tag {<group>}):
  1 cfg        hash   group settings (assignor, session_timeout_ms, ...)
  2 state      hash   epoch, epoch_ms (server time of its last bump), target_epoch, grant,
                      created_ms, server (who served the last op), topic:<name> -> partitions
  3 members    hash   member_id -> cjson {i=instance, c=client, t=topics, e=epoch,
                      pe=previous epoch, l=1 if a static member left temporarily,
                      o=owned partitions "topic:p topic:p"}
  4 hb         zset   member_id -> last heartbeat (server ms; leave time if l=1)
  5 target     hash   member_id -> target partitions "topic:p ..." (at state.target_epoch)
  6 owners     hash   "topic:p" -> "<member_id> <token> <epoch>" current owner and grant
  7 instances  hash   static instance_id -> member_id

ARGV[1] = op, ARGV[2] = member_id, then per op:
  join:       3 instance_id ("" = dynamic), 4 client info, 5 topics "name=count ...",
              6 "1" = this member was in the group before: the group must still exist
              (a vanished group is STATE_LOST, never silently re-created), "0" = first join,
              7.. settings as name, value pairs (used only if the group does not exist)
  heartbeat:  3 member epoch, 4 released partitions "topic:p ...",
              5 topics "name=count ..." ("" = unchanged)
  leave:      3 member epoch, 4 "1" = temporary (static members keep their partitions
              reserved until the session timeout), "0" = for good

Every op first restarts every member's session if the server changed since the last op
(state.server: the serving process's run id, and on a cluster the cluster's current epoch):
a replica promoted by a failover, a restarted server, a node that took the slot over, or on
a cluster a failover anywhere (while a primary was lost every node answered CLUSTERDOWN).
The members could not heartbeat meanwhile, and a promoted copy of the heartbeats counts on
another clock and may lag: each member gets a full session timeout, by this server's clock,
to heartbeat again, and the ones that do not are evicted then. Then every op evicts members
silent past session_timeout_ms (server TIME), freeing their partitions and bumping the group
epoch.

Reply: {"OK", member_id, member_epoch, group_epoch, target_epoch, settings {k, v, ...},
        owned {"topic:p", token, grant_epoch, ...}, to_revoke {...}, pending {...}, created,
        epoch_age_ms, members}
        (epoch_age_ms: how long ago the group epoch last changed, by server time; members: how
        many members the group has: members debounce target computations with them)
   or  {"ERR", code, message} with code FENCED | UNKNOWN_MEMBER | DUPLICATE_INSTANCE |
       STATE_LOST.
Tokens are decimal strings: they exceed cjson's and Lua's integer precision for printing.
]]

local K_CFG, K_STATE, K_MEMBERS, K_HB, K_TARGET, K_OWNERS, K_INST =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local op, member_id = ARGV[1], ARGV[2]

local function split(s)
  local out = {}
  if s then
    for w in string.gmatch(s, '%S+') do out[#out + 1] = w end
  end
  return out
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

local function sorted_keys(s)
  local out = {}
  for k in pairs(s) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local fmt = fmt_int  -- common.lua

local function get_member(id)
  local raw = redis.call('HGET', K_MEMBERS, id)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function put_member(id, rec)
  redis.call('HSET', K_MEMBERS, id, cjson.encode(rec))
end

local function bump_epoch()
  redis.call('HSET', K_STATE, 'epoch_ms', now_ms())
  return redis.call('HINCRBY', K_STATE, 'epoch', 1)
end

local function owner_of(tp)
  local v = redis.call('HGET', K_OWNERS, tp)
  if not v then return nil end
  return string.match(v, '^(%S+)')
end

local function grant(id, tp, epoch)
  local token = fmt(redis.call('HINCRBY', K_STATE, 'grant', 1))
  redis.call('HSET', K_OWNERS, tp, id .. ' ' .. token .. ' ' .. fmt(epoch))
end

local function remove_member(id, rec)
  for _, tp in ipairs(split(rec.o)) do
    if owner_of(tp) == id then redis.call('HDEL', K_OWNERS, tp) end
  end
  redis.call('HDEL', K_TARGET, id)
  redis.call('HDEL', K_MEMBERS, id)
  redis.call('ZREM', K_HB, id)
  if rec.i and rec.i ~= '' and redis.call('HGET', K_INST, rec.i) == id then
    redis.call('HDEL', K_INST, rec.i)
  end
end

local function evict(now, session_ms)
  local expired = redis.call('ZRANGEBYSCORE', K_HB, '-inf', now - session_ms)
  for _, id in ipairs(expired) do
    local rec = get_member(id)
    if rec then remove_member(id, rec) else redis.call('ZREM', K_HB, id) end
  end
  if #expired > 0 then bump_epoch() end
end

-- Who serves the group's keys: the process (its run id) and, on a cluster, the cluster's
-- current epoch, which every failover raises (CLUSTER INFO fails on a server without
-- cluster mode: pcall, and only the run id counts).
local function server_id()
  local id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
  local ok, info = pcall(redis.call, 'CLUSTER', 'INFO')
  if ok and type(info) == 'string' then
    id = id .. ':' .. (string.match(info, 'cluster_current_epoch:(%d+)') or '')
  end
  return id
end

-- A new server since the last op: every member's session restarts now (see the header).
local function restart_sessions_if_moved(now)
  local here = server_id()
  local last = redis.call('HGET', K_STATE, 'server')
  if last == here then return end
  if last then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_HB, '-inf', '+inf')) do
      redis.call('ZADD', K_HB, now, id)
    end
  end
  redis.call('HSET', K_STATE, 'server', here)
end

-- Apply "name=count ..." to the member's subscription and the group's partition counts.
local function update_topics(rec, spec)
  local names, changed = {}, false
  for name, count in string.gmatch(spec, '([^%s=]+)=(%d+)') do
    names[#names + 1] = name
    local cur = tonumber(redis.call('HGET', K_STATE, 'topic:' .. name) or '0')
    if tonumber(count) > cur then  -- partition counts only grow
      redis.call('HSET', K_STATE, 'topic:' .. name, count)
      changed = true
    end
  end
  table.sort(names)
  local joined = table.concat(names, ' ')
  if joined ~= rec.t then
    rec.t = joined
    changed = true
  end
  return changed
end

local function ensure_group(now, first_setting)
  if redis.call('EXISTS', K_CFG) == 1 then return 0 end
  local fields = {}
  for i = first_setting, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', K_CFG, unpack(fields))
  bootstrap_group_state(K_STATE, now)  -- common.lua
  return 1
end

-- Move the member towards its target; returns owned, to_revoke, pending (sorted lists).
local function reconcile(id, rec)
  local gepoch = tonumber(redis.call('HGET', K_STATE, 'epoch'))
  local tepoch = tonumber(redis.call('HGET', K_STATE, 'target_epoch'))
  local owned = set_of(split(rec.o))
  local to_revoke, pending = {}, {}
  if tepoch == gepoch then
    local target = split(redis.call('HGET', K_TARGET, id))
    local tset = set_of(target)
    for tp in pairs(owned) do
      if not tset[tp] then to_revoke[#to_revoke + 1] = tp end
    end
    -- New partitions only once everything to revoke is released: revocations come first.
    if #to_revoke == 0 then
      if rec.e ~= tepoch then rec.pe, rec.e = rec.e, tepoch end
      for _, tp in ipairs(target) do
        if not owned[tp] then
          if redis.call('HEXISTS', K_OWNERS, tp) == 0 then
            grant(id, tp, rec.e)
            owned[tp] = true
          else
            pending[#pending + 1] = tp
          end
        end
      end
    end
  end
  local owned_list = sorted_keys(owned)
  rec.o = table.concat(owned_list, ' ')
  put_member(id, rec)
  local flat = {}
  for _, tp in ipairs(owned_list) do
    local _, token, epoch = string.match(redis.call('HGET', K_OWNERS, tp), '^(%S+) (%S+) (%S+)')
    flat[#flat + 1] = tp
    flat[#flat + 1] = token
    flat[#flat + 1] = epoch
  end
  table.sort(to_revoke)
  table.sort(pending)
  return flat, to_revoke, pending, gepoch, tepoch
end

local function reply(id, rec, created)
  local flat, to_revoke, pending, gepoch, tepoch = reconcile(id, rec)
  local bumped = tonumber(redis.call('HGET', K_STATE, 'epoch_ms')) or 0
  return {'OK', id, rec.e, gepoch, tepoch, redis.call('HGETALL', K_CFG), flat, to_revoke,
          pending, created, math.max(0, now_ms() - bumped), redis.call('HLEN', K_MEMBERS)}
end

local now = now_ms()

if op == 'join' then
  -- A key of the wrong type (written by someone else) must stop a join before any write.
  local wrong = group_key_type_error(KEYS)  -- common.lua
  if wrong then return wrong end
  local instance, client, topics = ARGV[3], ARGV[4], ARGV[5]
  if ARGV[6] == '1' and redis.call('EXISTS', K_CFG) == 0 then
    return {'ERR', 'STATE_LOST', 'the group vanished while this member was in it (the server ' ..
            'restarted without persistence, or the group was deleted); it is not re-created ' ..
            'silently: recreate it (partstream group create) and choose where it starts ' ..
            '(partstream group seek), then restart the consumers'}
  end
  local created = ensure_group(now, 7)
  restart_sessions_if_moved(now)
  evict(now, tonumber(redis.call('HGET', K_CFG, 'session_timeout_ms')))
  local rec = get_member(member_id)
  if instance ~= '' then
    local holder = redis.call('HGET', K_INST, instance)
    if holder and holder ~= member_id then
      local old = get_member(holder)
      if old and old.l ~= 1 then
        return {'ERR', 'DUPLICATE_INSTANCE', 'instance id ' .. instance ..
                ' is held by live member ' .. holder .. '; stop that member, or wait for' ..
                ' its session to expire, or use another instance id'}
      end
      if old then
        -- Static rejoin within the session timeout: take over the old member's epoch,
        -- target and partitions (with fresh grant tokens). No group epoch bump.
        local kept = {}
        for _, tp in ipairs(split(old.o)) do
          if owner_of(tp) == holder then
            grant(member_id, tp, old.e)
            kept[#kept + 1] = tp
          end
        end
        rec = {i = instance, c = client, t = old.t, e = old.e, pe = old.e, l = 0,
               o = table.concat(kept, ' ')}
        local target = redis.call('HGET', K_TARGET, holder)
        if target then redis.call('HSET', K_TARGET, member_id, target) end
        redis.call('HDEL', K_TARGET, holder)
        redis.call('HDEL', K_MEMBERS, holder)
        redis.call('ZREM', K_HB, holder)
      end
    end
  end
  if rec then
    rec.c, rec.l = client, 0
    if instance ~= '' then rec.i = instance end
    if update_topics(rec, topics) then bump_epoch() end
  else
    rec = {i = instance, c = client, t = '', e = 0, pe = 0, l = 0, o = ''}
    update_topics(rec, topics)
    rec.e = bump_epoch()
    rec.pe = rec.e
  end
  if instance ~= '' then redis.call('HSET', K_INST, instance, member_id) end
  redis.call('ZADD', K_HB, now, member_id)
  return reply(member_id, rec, created)
end

if redis.call('EXISTS', K_CFG) == 0 then
  if op == 'leave' then return {'OK'} end
  return {'ERR', 'UNKNOWN_MEMBER', 'the group no longer exists (deleted); rejoin'}
end
restart_sessions_if_moved(now)
evict(now, tonumber(redis.call('HGET', K_CFG, 'session_timeout_ms')))
local rec = get_member(member_id)

if op == 'leave' then
  if not rec then return {'OK'} end
  if ARGV[4] == '1' and rec.i ~= '' then
    rec.l = 1
    put_member(member_id, rec)
    redis.call('ZADD', K_HB, now, member_id)
  else
    remove_member(member_id, rec)
    bump_epoch()
  end
  return {'OK'}
end

if op == 'heartbeat' then
  if not rec or rec.l == 1 then
    return {'ERR', 'UNKNOWN_MEMBER', 'member ' .. member_id ..
            ' is not in the group (session expired or left); drop all partitions and rejoin'}
  end
  local epoch = tonumber(ARGV[3])
  if epoch ~= rec.e and epoch ~= rec.pe then
    return {'ERR', 'FENCED', 'member ' .. member_id .. ' sent epoch ' .. ARGV[3] ..
            ' but its epoch is ' .. rec.e .. '; drop all partitions and rejoin'}
  end
  redis.call('ZADD', K_HB, now, member_id)
  local owned = set_of(split(rec.o))
  for _, tp in ipairs(split(ARGV[4])) do
    if owned[tp] then
      owned[tp] = nil
      if owner_of(tp) == member_id then redis.call('HDEL', K_OWNERS, tp) end
    end
  end
  rec.o = table.concat(sorted_keys(owned), ' ')
  if ARGV[5] ~= '' and update_topics(rec, ARGV[5]) then bump_epoch() end
  return reply(member_id, rec, 0)
end

return redis.error_reply('ERR member.lua: unknown op ' .. tostring(op))
