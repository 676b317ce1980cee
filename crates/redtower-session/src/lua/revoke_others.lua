-- Changes state: yes. Revokes every session of the user except the current one: bumps the
-- epoch (unindexed sessions die on their next use), deletes the other indexed sessions, and
-- stamps the current session with the new epoch. When the current session is not a live
-- session of this user, every session is revoked.
-- Re-send: idempotent in effect: the current session carries the epoch of the first run, so a
-- second run keeps it again and only revokes sessions created while the call was in flight
-- (concurrent with it); it answers 0. A revocation is never lost, the current session survives.
-- Work: at most ARGV[4] index entries (the per-user cap).
-- KEYS[1] epoch, KEYS[2] index, KEYS[3] current record
-- ARGV record key prefix, absolute_ms, user, max sessions per user
local gk, ik, ck = KEYS[1], KEYS[2], KEYS[3]
local now = now_ms()
local f = redis.call('HMGET', ck, 'u', 'g', 'h', 'e')
local keep = f[1] == ARGV[3] and f[2] == redis.call('GET', gk)
local n = 0
for _, h in ipairs(redis.call('ZRANGE', ik, 0, tonumber(ARGV[4]) - 1)) do
  if not (keep and h == f[3]) then
    n = n + redis.call('DEL', ARGV[1] .. h)
  end
end
redis.call('DEL', ik)
local existed = redis.call('EXISTS', gk)
local g = redis.call('INCR', gk)
if existed == 0 then redis.call('PEXPIRE', gk, ARGV[2]) end
if keep then
  redis.call('HSET', ck, 'g', g)
  redis.call('ZADD', ik, f[4], f[3])
  fix_index(ik)
  extend(gk, tonumber(f[4]), now)
end
return n
