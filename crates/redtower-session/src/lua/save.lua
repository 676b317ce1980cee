-- KEYS[1] record; ARGV data, wanted expiry ms, idle_ms
-- Updates an existing, live, unrevoked record only (never resurrects one).
local rk = KEYS[1]
local f = redis.call('HMGET', rk, 'e', 'x', 'h', 'u', 'g', 'gk', 'ik')
if not f[1] then return 'GONE' end
local now = now_ms()
local x, h, gk, ik = tonumber(f[2]), f[3], f[6], f[7]
if not epoch_ok(f[4], f[5], gk) or now >= x or now >= tonumber(f[1]) then
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
  fix_index(ik)
  extend(gk, e, now)
end
return tostring(e)
