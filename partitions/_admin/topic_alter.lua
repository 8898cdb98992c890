-- Change a topic's metadata: only growth of the partition count is allowed.
-- KEYS[1]  {ns}:t:{<topic>}:meta   hash
-- ARGV     expected_version, field, value, ...
-- Returns  the new version, or an error: NOTOPIC (missing), STALE (changed concurrently),
--          SHRINK (fewer partitions than now).
local cur = redis.call('HGET', KEYS[1], 'version')
if not cur then
  return redis.error_reply('NOTOPIC topic does not exist')
end
if ARGV[1] ~= '' and cur ~= ARGV[1] then
  return redis.error_reply('STALE topic metadata changed concurrently; retry')
end
for i = 2, #ARGV, 2 do
  if ARGV[i] == 'partitions' then
    local now = tonumber(redis.call('HGET', KEYS[1], 'partitions'))
    if tonumber(ARGV[i + 1]) < now then
      return redis.error_reply('SHRINK a topic cannot lose partitions')
    end
  end
end
if #ARGV > 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
end
return redis.call('HINCRBY', KEYS[1], 'version', 1)
