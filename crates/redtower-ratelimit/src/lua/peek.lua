-- Changes state: no (reads only).
-- Idempotent under re-send: yes (nothing is written).
-- redtower rate limit: the counters of one subject and the instant, read together, for
-- `RedisStore::peek` (the arithmetic runs in Rust, in the reference model).
-- KEYS: the subject's counter keys (one slot). ARGV[1]: now in µs, or '' to read Redis TIME.
-- Reply: { now (as a string), value or false per key }.
local now
if ARGV[1] ~= '' then
  now = ARGV[1]
else
  local t = redis.call('TIME')
  now = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
local values = redis.call('MGET', unpack(KEYS))
table.insert(values, 1, now)
return values
