-- Changes state: yes (bumps the user's epoch, deletes the indexed sessions and the index).
-- Re-send: idempotent in effect: the first run already revoked everything; a second bump only
-- revokes sessions created while the call was in flight (concurrent with it, so either order is
-- correct), and answers 0. A revocation is never lost or undone.
-- Work: bounded by the index, which create keeps at the per-user cap; at most ARGV[3] entries
-- are walked, the rest die by the epoch.
-- KEYS[1] epoch, KEYS[2] index; ARGV record key prefix, absolute_ms, max sessions per user
-- Bumping the epoch kills every session of the user, indexed or not, on its next use.
local gk, ik = KEYS[1], KEYS[2]
local n = 0
for _, h in ipairs(redis.call('ZRANGE', ik, 0, tonumber(ARGV[3]) - 1)) do
  n = n + redis.call('DEL', ARGV[1] .. h)
end
redis.call('DEL', ik)
local existed = redis.call('EXISTS', gk)
redis.call('INCR', gk)
if existed == 0 then redis.call('PEXPIRE', gk, ARGV[2]) end
return n
