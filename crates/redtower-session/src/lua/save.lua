-- Changes state: yes (the record's data and expiry, and its index score).
-- Re-send: idempotent: a second run writes the same data and expiry again. It updates an
-- existing, live, unrevoked record only, so a re-send that arrives after a logout or a
-- revocation answers GONE and never resurrects the session.
-- KEYS[1] record; ARGV data, wanted expiry ms, idle_ms
local rk = KEYS[1]
local f = redis.call('HMGET', rk, 'e', 'x', 'h', 'g', 'gk', 'ik')
if not f[1] then return 'GONE' end
local now = now_ms()
local old, x, h, g, gk, ik = tonumber(f[1]), tonumber(f[2]), f[3], f[4], f[5], f[6]
if (g and redis.call('GET', gk) ~= g) or now >= x or now >= old then
  kill(rk, h, ik)
  return 'GONE'
end
local e = math.min(tonumber(ARGV[2]), x)
local idle = tonumber(ARGV[3])
if idle > 0 then e = math.min(e, now + idle) end
if e <= now then
  kill(rk, h, ik)
  return 'EXPIRED'
end
redis.call('HSET', rk, 'd', ARGV[1], 'e', e, 'a', now)
redis.call('PEXPIREAT', rk, e)
if ik then
  redis.call('ZADD', ik, 'XX', e, h)
  if e >= old then
    extend(ik, e, now)
  else
    fix_index(ik)
  end
  extend(gk, e, now)
end
return tostring(e)
