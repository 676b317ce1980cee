-- KEYS[1] record [, KEYS[2] epoch, KEYS[3] index]
-- ARGV data, wanted expiry ms, idle_ms, absolute_ms, handle [, user, meta]
local rk = KEYS[1]
if redis.call('EXISTS', rk) == 1 then return 'COLLISION' end
local now = now_ms()
local x = now + tonumber(ARGV[4])
local e = math.min(tonumber(ARGV[2]), x)
local idle = tonumber(ARGV[3])
if idle > 0 then e = math.min(e, now + idle) end
if e <= now then return 'EXPIRED' end
redis.call('HSET', rk, 'd', ARGV[1], 'e', e, 'c', now, 'a', now, 'x', x, 'h', ARGV[5])
if #KEYS == 3 then
  local gk, ik = KEYS[2], KEYS[3]
  local g = redis.call('GET', gk)
  if not g then
    g = '0'
    redis.call('SET', gk, g)
  end
  redis.call('HSET', rk, 'u', ARGV[6], 'g', g, 'gk', gk, 'ik', ik, 'm', ARGV[7])
  redis.call('ZREMRANGEBYSCORE', ik, '-inf', now)
  redis.call('ZADD', ik, e, ARGV[5])
  fix_index(ik)
  extend(gk, e, now)
end
redis.call('PEXPIREAT', rk, e)
return tostring(e)
