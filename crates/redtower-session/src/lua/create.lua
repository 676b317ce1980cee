-- Changes state: yes. Writes the record; for a session bound to a user also the epoch (when
-- missing) and the index, and revokes the user's sessions beyond the cap (those that expire
-- soonest: the oldest, or with an idle timeout the least recently used).
-- Re-send (fred re-sends a script in flight when its connection drops): idempotent, through a
-- client-chosen id plus a creation token. The caller draws the id and a random 128-bit token
-- once per attempt, and the token is stored in the record (field t). A re-send of the same
-- call finds the record carrying its own token and answers as the first run did, so there is
-- one record, one index entry and no second eviction. An existing record with another token is
-- a real id collision (the caller draws a new id and token).
-- KEYS[1] record [, KEYS[2] epoch, KEYS[3] index]
-- ARGV data, wanted expiry ms, idle_ms, absolute_ms, handle, token, max sessions per user
--      [, user, meta]
local rk, h = KEYS[1], ARGV[5]
if redis.call('EXISTS', rk) == 1 then
  if redis.call('HGET', rk, 't') == ARGV[6] then
    return redis.call('HGET', rk, 'e')
  end
  return 'COLLISION'
end
local now = now_ms()
local x = now + tonumber(ARGV[4])
local e = math.min(tonumber(ARGV[2]), x)
local idle = tonumber(ARGV[3])
if idle > 0 then e = math.min(e, now + idle) end
if e <= now then return 'EXPIRED' end
redis.call('HSET', rk, 'd', ARGV[1], 'e', e, 'c', now, 'a', now, 'x', x, 'h', h, 't', ARGV[6])
if #KEYS == 3 then
  local gk, ik = KEYS[2], KEYS[3]
  local g = redis.call('GET', gk)
  if not g then
    g = '0'
    redis.call('SET', gk, g)
  end
  redis.call('HSET', rk, 'u', ARGV[8], 'g', g, 'gk', gk, 'ik', ik, 'm', ARGV[9])
  redis.call('ZREMRANGEBYSCORE', ik, '-inf', now)
  redis.call('ZADD', ik, e, h)
  -- The cap: the index never holds more than ARGV[7] entries, so list and revoke_all walk at
  -- most that many. Records of one user share the prefix of this record's key.
  local over = redis.call('ZCARD', ik) - tonumber(ARGV[7])
  if over > 0 then
    local prefix = string.sub(rk, 1, #rk - #h)
    for _, old in ipairs(redis.call('ZRANGE', ik, 0, over)) do
      if over > 0 and old ~= h then
        redis.call('DEL', prefix .. old)
        redis.call('ZREM', ik, old)
        over = over - 1
      end
    end
  end
  fix_index(ik)
  extend(gk, e, now)
end
redis.call('PEXPIREAT', rk, e)
return tostring(e)
