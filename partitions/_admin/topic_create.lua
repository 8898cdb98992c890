-- Create a topic's metadata hash if it does not exist yet.
-- KEYS[1]  {ns}:t:{<topic>}:meta   hash
-- ARGV     field, value, ... (partitions, routing, retention_ms, max_length, regions, ...)
-- Returns  1 if created, 0 if the topic already existed (nothing changed).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'created_ms', now_ms(), 'version', 1, unpack(ARGV))  -- common.lua
return 1
