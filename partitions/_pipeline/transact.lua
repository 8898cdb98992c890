--[[ transact.lua: a pipeline's outputs and its input acknowledgement (exactly once).

op "commit": one atomic call, for a single node or a Sentinel-managed primary, where one
call may touch any keys. Checks the input partition's fence (as consume.lua does), that the
input entry is still pending for the group, and every output argument; then appends every
output partition's records (as append.lua does: retention, safe retention, consecutive ids)
and XACKs the input entry. All or nothing: an error or a refusal writes nothing.
  KEYS  1 input stream, 2 input fence, 3 input groups hash ({<in topic>:<p>} tag),
        then 2 per output partition: its stream, its groups hash (read: "~cut")
  ARGV  1 "commit", 2 group, 3 fence value "<member_id> <token>", 4 input entry id,
        5 m = output partitions, then per output partition:
        max length, retention ms, safe retention (1/0), n records, the records
  Reply {1, {ids of output partition 1}, ..., {ids of partition m}}   written and acked
        {2}             the input entry is not pending (committed before: a retry after a
                        lost reply, or dead-lettered): nothing written
        {0, "<holder>"} not owner: a newer grant holds the fence ("nobody": released)
        {-1, "<what>"}  state lost: the fence, stream or group vanished

op "apply": one output partition's records of one input record, idempotently, for a Cluster
(where the input and output partitions sit in other slots). The partition keeps, per source
("<group> <input topic> <input partition>"), the highest input id applied: a record at or
below it was applied before (a replay after a crash) and is dropped. The caller applies an
input partition's records in id order, all of a record's output partitions before the next
record, and acks the input (fenced) only after: that is what makes dropping safe.
  KEYS  1 stream, 2 groups hash (read: "~cut"), 3 applied hash (source -> input id)
  ARGV  1 "apply", 2 source, 3 input entry id, 4 max length, 5 retention ms,
        6 safe retention (1/0), 7 n records (at least 1), 8.. the records
  Reply {1, id1, ..., idn}  appended   |   {2, "<mark>"}  a duplicate: nothing written

Records are in append.lua's shapes (common.lua's scan_records). BADBATCH errors: malformed
arguments, nothing written. Ids are compared exactly, as decimal strings.
]]

local argv = ARGV
local function bad(msg)
  return redis.error_reply('BADBATCH ' .. msg .. ' (nothing written)')
end

-- a <= b for stream ids "<ms>-<seq>" (decimal, no leading zeros): by length, then text.
local function num_le(a, b)
  if #a ~= #b then return #a < #b end
  return a <= b
end
local function id_parts(id)
  return string.match(id, '^(%d+)-(%d+)$')
end
local function id_le(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  if ams ~= bms then return num_le(ams, bms) end
  return num_le(aseq, bseq)
end
local function valid_id(id)
  local ms, seq = id_parts(id or '')
  return ms ~= nil and (ms == '0' or ms:sub(1, 1) ~= '0') and (seq == '0' or seq:sub(1, 1) ~= '0')
end

-- One partition block at argv[i]: max length, retention ms, safe, n, records. Returns the
-- parsed block and the index after it, or nil and what is wrong.
local function scan_block(i)
  if not (is_count(argv[i]) and is_count(argv[i + 1]) and is_count(argv[i + 3])) then
    return nil, 'max length, retention ms and record count must be integers below 10^13'
  end
  local n = tonumber(argv[i + 3])
  if n < 1 then return nil, 'an output partition gets at least one record' end
  local after, why = scan_records(argv, i + 4, n)
  if not after then return nil, why end
  return {maxlen = argv[i], retention_ms = tonumber(argv[i + 1]), safe = argv[i + 2] == '1',
          n = n, first = i + 4}, after
end

-- A key another client wrote with another type would fail an XADD half-way: refuse first.
local function type_error(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. t .. ', not a ' .. want ..
      ': something else wrote it; delete it or use another namespace (nothing written)')
  end
  return nil
end

local function write_block(out, stream, groups, b, now)
  local first_trim, last_trim = batch_trims(b.maxlen, b.retention_ms, b.safe, groups, b.n,
    now, now)
  append_records(out, stream, argv, b.first, b.n, first_trim, last_trim)
end

local op = argv[1]

if op == 'commit' then
  local group, mine, input_id = argv[2], argv[3], argv[4]
  if not valid_id(input_id) then return bad('input id ' .. tostring(input_id) .. ' is no id') end
  if not is_count(argv[5]) then return bad('the output partition count must be an integer') end
  local m = tonumber(argv[5])
  if #KEYS ~= 3 + 2 * m then
    return bad(m .. ' output partitions need ' .. (3 + 2 * m) .. ' keys, got ' .. #KEYS)
  end
  local blocks, i = {}, 6
  for j = 1, m do
    local b, after = scan_block(i)
    if not b then return bad('output partition ' .. j .. ': ' .. after) end
    blocks[j], i = b, after
  end
  if i ~= #argv + 1 then return bad('the arguments do not match ' .. m .. ' output partitions') end

  -- The fence, as consume.lua checks it: an empty one after the group touched the partition
  -- was released by a later owner; without the mark too, the keys were wiped under us.
  local holder = redis.call('HGET', KEYS[2], group)
  if holder ~= mine then
    if holder then return {0, holder} end
    if redis.call('HEXISTS', KEYS[3], group) == 1 then return {0, 'nobody'} end
    return {-1, 'fence'}
  end
  local pend = redis.pcall('XPENDING', KEYS[1], group, input_id, input_id, 1)
  if type(pend) == 'table' and pend.err then
    if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 'stream'} end
    return {-1, 'group'}
  end
  if not pend[1] then return {2} end
  for j = 1, m do
    local err = type_error(KEYS[2 + 2 * j], 'stream') or type_error(KEYS[3 + 2 * j], 'hash')
    if err then return err end
  end

  local now = now_ms()  -- common.lua
  local reply = {1}
  for j = 1, m do
    local ids = {}
    write_block(ids, KEYS[2 + 2 * j], KEYS[3 + 2 * j], blocks[j], now)
    reply[j + 1] = ids
  end
  redis.call('XACK', KEYS[1], group, input_id)
  return reply
end

if op == 'apply' then
  local source, input_id = argv[2], argv[3]
  if not valid_id(input_id) then return bad('input id ' .. tostring(input_id) .. ' is no id') end
  local b, after = scan_block(4)
  if not b then return bad(after) end
  if after ~= #argv + 1 then return bad('the arguments do not match ' .. b.n .. ' records') end
  local mark = redis.call('HGET', KEYS[3], source)
  if mark and id_le(input_id, mark) then return {2, mark} end
  local err = type_error(KEYS[1], 'stream') or type_error(KEYS[2], 'hash')
  if err then return err end
  local out = {1}
  write_block(out, KEYS[1], KEYS[2], b, now_ms())
  redis.call('HSET', KEYS[3], source, input_id)
  return out
end

return redis.error_reply('ERR transact.lua: unknown op ' .. tostring(op))
