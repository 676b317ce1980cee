-- The generation of one tag for an entry about to be stored for ARGV[2] ms: created with
-- ARGV[1] when missing, its TTL extended to cover the entry. KEYS[1] tag key.
--
-- Changes state: yes (creates the generation, extends its TTL). Idempotent under re-send:
-- yes, and it is sent with the client's usual attempts. A re-send of a run whose reply was
-- lost finds the generation it created and returns it; the TTL only ever grows to the same
-- bound.
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
