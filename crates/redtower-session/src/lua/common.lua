-- Shared helpers (prepended to every session script).
-- Record: HASH d=data e=expiry ms c=created a=last seen x=absolute deadline h=handle
--         and, when bound to a user: u=user g=epoch stamp gk=epoch key ik=index key m=meta.
-- Index:  ZSET member=handle score=expiry ms; its PEXPIREAT is always its max score.
-- Epoch:  INT, lives at least as long as any session of the user.
-- A record's PEXPIREAT is always e, and e <= x: a record that exists is within both timeouts.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fix_index(ik)
  local top = redis.call('ZRANGE', ik, -1, -1, 'WITHSCORES')
  if #top == 0 then
    redis.call('DEL', ik)
  else
    redis.call('PEXPIREAT', ik, top[2])
  end
end

local function extend(k, at, now)
  local p = redis.call('PTTL', k)
  if p == -1 or (p >= 0 and now + p < at) then
    redis.call('PEXPIREAT', k, at)
  end
end

local function kill(rk, h, ik)
  redis.call('DEL', rk)
  if ik then
    redis.call('ZREM', ik, h)
    fix_index(ik)
  end
end

