-- Changes state: yes, bookkeeping only (last seen, the idle slide of the expiry, and deleting
-- a session found expired or revoked). Re-send: idempotent: a second run touches to a time no
-- earlier than the first, and deleting a dead session again changes nothing. It never creates.
-- KEYS: the records of a batch of loads (one per request, in order; on a Cluster all of one
-- slot); ARGV idle_ms, touch_interval_ms.
-- Reply: per key, its data and expiry, or two empty strings when the session is missing,
-- expired or revoked. A batch of one is the plain load; several are loaded one after another.
-- Fast path (one HMGET, the epoch GET for a bound session, TIME once per batch): the record
-- exists, so its TTL has not run out, and that TTL is never later than the absolute deadline
-- (every script sets PEXPIREAT e with e <= x); the user's epoch is unchanged; the last touch is
-- recent.
local now = now_ms()
local idle, touch = tonumber(ARGV[1]), tonumber(ARGV[2])

local function load(rk)
  local f = redis.call('HMGET', rk, 'd', 'e', 'a', 'g', 'gk')
  if not f[1] then return nil end
  local revoked = f[4] and redis.call('GET', f[5]) ~= f[4]
  if not revoked and now - tonumber(f[3]) < touch then
    return f[1], f[2]
  end
  -- Due for a touch (at most once per touch interval): last seen, and the idle slide when it
  -- moves the expiry.
  local e = tonumber(f[2])
  if not revoked and (idle <= 0 or now + idle <= e) then
    redis.call('HSET', rk, 'a', now)
    return f[1], f[2]
  end
  local m = redis.call('HMGET', rk, 'x', 'h', 'ik')
  local x, h, gk, ik = tonumber(m[1]), m[2], f[5], m[3]
  if revoked or now >= x then
    kill(rk, h, ik)
    return nil
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
  return f[1], tostring(e)
end

local reply = {}
for i = 1, #KEYS do
  local d, e = load(KEYS[i])
  reply[2 * i - 1] = d or ''
  reply[2 * i] = e or ''
end
return reply
