-- KEYS[1] epoch, KEYS[2] index; ARGV record key prefix, absolute_ms
-- Bumping the epoch kills every session of the user, indexed or not, on its next use.
local gk, ik = KEYS[1], KEYS[2]
local n = 0
for _, h in ipairs(redis.call('ZRANGE', ik, 0, -1)) do
  n = n + redis.call('DEL', ARGV[1] .. h)
end
redis.call('DEL', ik)
local existed = redis.call('EXISTS', gk)
redis.call('INCR', gk)
if existed == 0 then redis.call('PEXPIRE', gk, ARGV[2]) end
return n
