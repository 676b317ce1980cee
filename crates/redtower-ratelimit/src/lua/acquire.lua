-- Changes state: yes (drops expired leases of one subject, adds one lease if there is room).
-- Idempotent under re-send: yes for the count: a re-send adds the same member (the caller's
-- random token) again, which a sorted set holds once; only its expiry moves.
-- redtower rate limit: take a concurrency lease, for `RedisStore::acquire`.
-- KEYS[1]: the subject's lease set (member = token, score = expiry in µs).
-- ARGV[1]: now in µs or '' for Redis TIME; ARGV[2]: the most leases; ARGV[3]: the lease's
-- lifetime in µs; ARGV[4]: the token.
-- Reply: { 1 if taken else 0, leases held after this call }.
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local k = KEYS[1]
local max, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%d', now))
local held = redis.call('ZCARD', k)
if redis.call('ZSCORE', k, ARGV[4]) then held = held - 1 end
if held >= max then
  return {0, held}
end
redis.call('ZADD', k, string.format('%d', now + ttl), ARGV[4])
-- The newest lease expires last: the set lives as long as it (a test clock may run behind
-- Redis: keep at least the lifetime).
redis.call('PEXPIRE', k, math.floor((ttl + 999) / 1000))
return {1, held + 1}
