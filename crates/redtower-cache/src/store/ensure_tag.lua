-- The generation of one tag for an entry about to be stored for ARGV[2] ms: created with
-- ARGV[1] when missing, its TTL extended to cover the entry. KEYS[1] tag key.
local g = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[2])
if not g then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  return ARGV[1]
end
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return g
