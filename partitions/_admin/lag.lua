--[[ lag.lua: how many entries of a stream come after an id (a group's undelivered entries),
for when XINFO GROUPS cannot tell (its lag is NULL after XGROUP SETID or deletions).

KEYS:
  1 stream  stream  the partition
ARGV:
  1 id      count the entries strictly after it
  2 limit   stop counting past this many (bounds the work on a huge backlog)

Reply: {count, exact}: exact is 1, or 0 when the count stopped at the limit (a lower bound).
]]

return count_after(KEYS[1], ARGV[1], tonumber(ARGV[2]))  -- common.lua
