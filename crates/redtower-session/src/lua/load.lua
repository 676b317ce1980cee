-- KEYS[1] record; ARGV idle_ms, touch_interval_ms
-- Fast path (one HMGET, the epoch GET for a bound session, TIME): the record exists, so its
-- TTL has not run out, and that TTL is never later than the absolute deadline (every script
-- sets PEXPIREAT e with e <= x); the user's epoch is unchanged; the last touch is recent.
local rk = KEYS[1]
local f = redis.call('HMGET', rk, 'd', 'e', 'a', 'g', 'gk')
if not f[1] then return false end
local revoked = f[4] and redis.call('GET', f[5]) ~= f[4]
local now = now_ms()
if not revoked and now - tonumber(f[3]) < tonumber(ARGV[2]) then
  return {f[1], f[2]}
end
-- Due for a touch (at most once per touch interval): last seen, and the idle slide when it
-- moves the expiry.
local e, idle = tonumber(f[2]), tonumber(ARGV[1])
if not revoked and (idle <= 0 or now + idle <= e) then
  redis.call('HSET', rk, 'a', now)
  return {f[1], f[2]}
end
local m = redis.call('HMGET', rk, 'x', 'h', 'ik')
local x, h, gk, ik = tonumber(m[1]), m[2], f[5], m[3]
if revoked or now >= x then
  kill(rk, h, ik)
  return false
end
local ne = math.min(now + idle, x)
if ne > e then
  e = ne
  redis.call('HSET', rk, 'a', now, 'e', e)
  redis.call('PEXPIREAT', rk, e)
  if ik then
    -- The expiry only grows here, so the index and epoch TTLs only need to grow with it.
    redis.call('ZADD', ik, 'XX', e, h)
    extend(ik, e, now)
    extend(gk, e, now)
  end
else
  redis.call('HSET', rk, 'a', now)
end
return {f[1], tostring(e)}
