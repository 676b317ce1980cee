-- KEYS[1] record; ARGV idle_ms, touch_interval_ms
local rk = KEYS[1]
local f = redis.call('HMGET', rk, 'd', 'e', 'x', 'a', 'h', 'u', 'g', 'gk', 'ik')
if not f[1] then return false end
local now = now_ms()
local e, x, a = tonumber(f[2]), tonumber(f[3]), tonumber(f[4])
local h, gk, ik = f[5], f[8], f[9]
if not epoch_ok(f[6], f[7], gk) or now >= x or now >= e then
  kill(rk, h, ik)
  return false
end
local idle = tonumber(ARGV[1])
if now - a >= tonumber(ARGV[2]) then
  redis.call('HSET', rk, 'a', now)
  if idle > 0 then
    local ne = math.min(now + idle, x)
    if ne > e then
      e = ne
      redis.call('HSET', rk, 'e', e)
      redis.call('PEXPIREAT', rk, e)
      if ik then
        redis.call('ZADD', ik, 'XX', e, h)
        fix_index(ik)
        extend(gk, e, now)
      end
    end
  end
end
return {f[1], tostring(e)}
